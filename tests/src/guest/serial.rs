//! Parsing the marker lines the guest prints on its serial console.
//!
//! The guest (tests/guest/init.sh, workload.sh) prints, each on a line of its own:
//! `STEP <name> ok`, `STEP <name> FAIL <detail>`, `DATA <key> <value>`,
//! `WORKLOAD EXIT <code>`, `BENCH <name> <seconds>` (tests/guest/bench.sh), and
//! `DEMO BEGIN` … `DEMO END` around the demo's output.

use std::collections::BTreeMap;

/// How one step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// The step passed.
    Ok,
    /// The step failed; the guest's explanation.
    Fail(String),
}

/// One `STEP` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The step's name.
    pub name: String,
    /// Its result.
    pub result: StepResult,
}

/// Everything the markers in a serial log say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SerialReport {
    /// Steps in the order printed.
    pub steps: Vec<Step>,
    /// `DATA` values by key (the last one wins).
    pub data: BTreeMap<String, String>,
    /// The code from `WORKLOAD EXIT`, if printed.
    pub exit_code: Option<i32>,
    /// `BENCH` times in the order printed: (name, seconds of guest uptime). A line whose
    /// time is not a number is left out.
    pub bench: Vec<(String, f64)>,
}

impl SerialReport {
    /// The result of the step called `name`, if it was printed.
    pub fn step(&self, name: &str) -> Option<&StepResult> {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.result)
    }

    /// The time of the `BENCH` line called `name` (the last one if printed twice).
    pub fn bench_time(&self, name: &str) -> Option<f64> {
        self.bench
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|&(_, t)| t)
    }

    /// A one-line account of where the guest's time went, from the `DATA mounted_at`,
    /// `DATA done_at` and `DATA time_<step>` values (guest uptime, 10 ms resolution).
    pub fn timing_summary(&self) -> String {
        let secs = |key: &str| self.data.get(key).and_then(|v| v.parse::<f64>().ok());
        let mut parts = Vec::new();
        if let Some(m) = secs("mounted_at") {
            parts.push(format!("share mounted at {m:.2} s of guest uptime"));
            if let Some(d) = secs("done_at") {
                parts.push(format!("workload took {:.2} s", d - m));
            }
        }
        let mut steps: Vec<(&str, f64)> = self
            .data
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("time_")?, v.parse().ok()?)))
            .collect();
        steps.sort_by(|a, b| b.1.total_cmp(&a.1));
        if !steps.is_empty() {
            let slowest: Vec<String> = steps
                .iter()
                .take(3)
                .map(|(n, t)| format!("{n} {t:.2} s"))
                .collect();
            parts.push(format!("slowest steps: {}", slowest.join(", ")));
        }
        parts.join("; ")
    }

    /// Problems with the run as a whole: each expected step missing or not ok, unexpected
    /// failing steps, and a missing or non-zero exit code. Empty means all passed.
    pub fn problems(&self, expected: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut silent = Vec::new();
        for name in expected {
            match self.step(name) {
                None => silent.push(*name),
                Some(StepResult::Fail(why)) => out.push(format!("step {name} failed: {why}")),
                Some(StepResult::Ok) => {}
            }
        }
        if !silent.is_empty() {
            out.push(format!("steps that did not report: {}", silent.join(", ")));
        }
        for s in &self.steps {
            if !expected.contains(&s.name.as_str()) {
                if let StepResult::Fail(why) = &s.result {
                    out.push(format!("step {} failed: {why}", s.name));
                }
            }
        }
        match self.exit_code {
            None => out.push("the guest never printed WORKLOAD EXIT".to_owned()),
            Some(0) => {}
            Some(c) => out.push(format!("the guest workload exited with {c}")),
        }
        out
    }
}

/// Parses the markers out of a serial log. Lines that are not markers are ignored; a carriage
/// return before the newline is tolerated.
pub fn parse(serial: &str) -> SerialReport {
    let mut report = SerialReport::default();
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("STEP ") {
            let (name, result) = rest.split_once(' ').unwrap_or((rest, ""));
            let result = if result == "ok" {
                StepResult::Ok
            } else {
                let why = result.strip_prefix("FAIL").unwrap_or(result).trim();
                StepResult::Fail(if why.is_empty() {
                    "no detail".into()
                } else {
                    why.into()
                })
            };
            report.steps.push(Step {
                name: name.to_owned(),
                result,
            });
        } else if let Some(rest) = line.strip_prefix("DATA ") {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            report.data.insert(k.to_owned(), v.trim().to_owned());
        } else if let Some(code) = line.strip_prefix("WORKLOAD EXIT ") {
            report.exit_code = code.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("BENCH ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(Ok(secs)), None) = (
                words.next(),
                words.next().map(str::parse::<f64>),
                words.next(),
            ) {
                report.bench.push((name.to_owned(), secs));
            }
        }
    }
    report
}

/// The text between the `DEMO BEGIN` and `DEMO END` lines, if both were printed.
pub fn demo_output(serial: &str) -> Option<String> {
    let mut lines = serial.lines().map(|l| l.trim_end_matches('\r'));
    lines.by_ref().find(|l| *l == "DEMO BEGIN")?;
    let mut out = String::new();
    for line in lines {
        if line == "DEMO END" {
            return Some(out);
        }
        out.push_str(line);
        out.push('\n');
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "[    0.1] boot noise\r\nVFSDAX BOOTED 1.2 mode=workload tag=t\r\nSTEP mount ok\r\n\
        DATA big_md5 0123abcd\r\nSTEP write ok\r\nSTEP chmod FAIL mode of m: got '644', want '640'\r\n\
        STEP weird\nSTEP extra FAIL\nWORKLOAD EXIT 1\r\n";

    #[test]
    fn parses_steps_data_and_exit() {
        let r = parse(LOG);
        assert_eq!(r.step("mount"), Some(&StepResult::Ok));
        assert_eq!(r.step("write"), Some(&StepResult::Ok));
        assert_eq!(
            r.step("chmod"),
            Some(&StepResult::Fail("mode of m: got '644', want '640'".into()))
        );
        assert!(matches!(r.step("weird"), Some(StepResult::Fail(_))));
        assert_eq!(r.data.get("big_md5").map(String::as_str), Some("0123abcd"));
        assert_eq!(r.exit_code, Some(1));
    }

    #[test]
    fn problems_lists_every_failure() {
        let r = parse(LOG);
        let p = r.problems(&["mount", "write", "chmod", "readdir"]);
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p.iter().any(|x| x.contains("chmod failed")));
        assert!(p.iter().any(|x| x.contains("did not report: readdir")));
        assert!(p.iter().any(|x| x.contains("extra failed")));
        assert!(p.iter().any(|x| x.contains("exited with 1")));
        let ok = parse("STEP a ok\nWORKLOAD EXIT 0\n");
        assert!(ok.problems(&["a"]).is_empty());
        assert_eq!(parse("STEP a ok\n").problems(&["a"]).len(), 1);
    }

    #[test]
    fn timing_summary_reads_guest_times() {
        let r = parse(
            "DATA mounted_at 4.25\nDATA time_write 0.5\nDATA time_readdir 2\nDATA time_stat 0.01\n\
             DATA time_chmod 0.02\nDATA done_at 11.25\n",
        );
        assert_eq!(
            r.timing_summary(),
            "share mounted at 4.25 s of guest uptime; workload took 7.00 s; \
             slowest steps: readdir 2.00 s, write 0.50 s, chmod 0.02 s"
        );
        assert_eq!(parse("").timing_summary(), "");
    }

    #[test]
    fn parses_bench_times() {
        let r = parse(
            "BENCH write 0.72\r\nSTEP write ok\nBENCH read x\nBENCH stat 1 2\nBENCH\n\
             BENCH create 3.50\nBENCH write 0.80\n",
        );
        assert_eq!(
            r.bench,
            [
                ("write".to_owned(), 0.72),
                ("create".to_owned(), 3.5),
                ("write".to_owned(), 0.8)
            ]
        );
        assert_eq!(r.bench_time("write"), Some(0.8));
        assert_eq!(r.bench_time("read"), None);
        assert_eq!(r.step("write"), Some(&StepResult::Ok));
    }

    #[test]
    fn extracts_demo_output() {
        let log = "noise\r\nDEMO BEGIN\r\n$ ls\r\nhello.txt\r\nDEMO END\r\nWORKLOAD EXIT 0\r\n";
        assert_eq!(demo_output(log).as_deref(), Some("$ ls\nhello.txt\n"));
        assert_eq!(demo_output("DEMO BEGIN\nhalf"), None);
    }
}
