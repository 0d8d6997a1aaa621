//! In-process vhost-user frontend harness: the transport side. The same FUSE traffic with every
//! combination of EVENT_IDX and indirect descriptors, descriptors that cut through structures,
//! and many requests in flight at once.

use std::os::unix::fs::MetadataExt;

use vfsdax_driver::{BatchRequest, ClientOptions, FeatureWishes};
use vfsdax_protocol::fuse::ROOT_ID;
use vfsdax_tests::harness::{pattern, DaemonOptions, Session};
use vhost::VhostBackend;
use vm_memory::Bytes;

/// The same small workload with every combination of EVENT_IDX and indirect descriptors, and
/// buffers split into 4 KiB descriptors (scatter-gather across descriptor boundaries).
#[test]
fn ring_feature_combinations_and_scatter_gather() {
    for (event_idx, indirect) in [(false, false), (true, false), (false, true), (true, true)] {
        let copts = ClientOptions {
            queue_size: 256,
            wishes: FeatureWishes {
                event_idx,
                indirect,
                reply_ack: event_idx,
            },
            use_indirect: indirect,
            max_desc_len: 4096,
            ..Default::default()
        };
        let mut s = Session::start_with(&DaemonOptions::default(), copts);
        let f = s.client.frontend();
        assert_eq!((f.event_idx(), f.indirect()), (event_idx, indirect));
        let data = pattern(120_000, 9);
        let (e, o) = s
            .client
            .create(ROOT_ID, b"sg", libc::O_RDWR as u32, 0o600, 0)
            .unwrap();
        // Two WRITEs of 60 000 bytes, each spread over 15 descriptors.
        for (i, chunk) in data.chunks(60_000).enumerate() {
            let w = s
                .client
                .write(e.nodeid, o.fh, (i * 60_000) as u64, chunk)
                .unwrap();
            assert_eq!(w.size as usize, chunk.len());
        }
        assert_eq!(
            std::fs::read(s.host("sg")).unwrap(),
            data,
            "event_idx={event_idx} indirect={indirect}"
        );
        for round in 0..300u64 {
            let back = s.client.read(e.nodeid, o.fh, round * 100, 10_000).unwrap();
            let start = (round * 100) as usize;
            assert_eq!(back, &data[start..start + 10_000], "round {round}");
        }
        s.client.release(e.nodeid, o.fh, 0).unwrap();
        s.assert_serving();
    }
}

/// Headers and reply structures split across 7-byte descriptors: the daemon must gather and
/// scatter across descriptor boundaries that cut through every structure.
#[test]
fn tiny_descriptors_cut_through_headers_and_structures() {
    let copts = ClientOptions {
        queue_size: 256,
        use_indirect: false,
        max_desc_len: 7,
        ..Default::default()
    };
    let mut s = Session::start_with(&DaemonOptions::default(), copts);
    std::fs::write(s.host("t"), b"tiny descriptors").unwrap();
    let meta = std::fs::metadata(s.host("t")).unwrap();
    let e = s.client.lookup(ROOT_ID, b"t").unwrap();
    assert_eq!((e.attr.ino, e.attr.size), (meta.ino(), 16));
    let o = s.client.open(e.nodeid, libc::O_RDWR as u32).unwrap();
    assert_eq!(
        s.client.read(e.nodeid, o.fh, 5, 100).unwrap(),
        b"descriptors"
    );
    let w = s.client.write(e.nodeid, o.fh, 0, b"TINY").unwrap();
    assert_eq!(w.size, 4);
    assert_eq!(std::fs::read(s.host("t")).unwrap(), b"TINY descriptors");
    s.client.release(e.nodeid, o.fh, 0).unwrap();
    s.assert_serving();
}

/// Many requests in flight at once: the daemon must answer each (out of order is fine) and the
/// replies must match their requests.
#[test]
fn many_requests_in_flight() {
    // Served on the queue's thread, then on a worker pool (with and without EVENT_IDX).
    many_requests_in_flight_with(&[], true);
    many_requests_in_flight_with(&["--thread-pool-size", "4"], true);
    many_requests_in_flight_with(&["--thread-pool-size", "4"], false);
}

/// Names of the daemon's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn many_requests_in_flight_with(daemon_args: &[&str], event_idx: bool) {
    use vfsdax_protocol::fuse::{GetattrIn, Opcode, ReadIn};
    use vm_memory::ByteValued;
    let dopts = DaemonOptions {
        extra_args: daemon_args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let copts = ClientOptions {
        wishes: FeatureWishes {
            event_idx,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut s = Session::start_with(&dopts, copts);
    let data = pattern(64 * 1024, 5);
    std::fs::write(s.host("par"), &data).unwrap();
    let e = s.client.lookup(ROOT_ID, b"par").unwrap();
    let o = s.client.open(e.nodeid, libc::O_RDONLY as u32).unwrap();
    let reads: Vec<ReadIn> = (0..96u64)
        .map(|i| ReadIn {
            fh: o.fh,
            offset: i * 600,
            size: 1000,
            ..Default::default()
        })
        .collect();
    let getattr = GetattrIn::default();
    let mut reqs: Vec<BatchRequest<'_>> = reads
        .iter()
        .map(|r| BatchRequest {
            opcode: Opcode::Read,
            nodeid: e.nodeid,
            parts: vec![r.as_slice()],
            reply_cap: r.size,
        })
        .collect();
    reqs.push(BatchRequest {
        opcode: Opcode::Getattr,
        nodeid: e.nodeid,
        parts: vec![getattr.as_slice()],
        reply_cap: 104,
    });
    let replies = s.client.request_batch(&reqs).unwrap();
    assert_eq!(replies.len(), 97);
    for (i, r) in replies.iter().take(96).enumerate() {
        let start = i * 600;
        assert_eq!(r.as_ref().unwrap(), &data[start..start + 1000], "READ {i}");
    }
    let attr: vfsdax_protocol::fuse::AttrOut =
        vfsdax_driver::fuse::parse_attr(replies[96].as_ref().unwrap()).unwrap();
    assert_eq!(attr.attr.size, data.len() as u64);
    s.client.release(e.nodeid, o.fh, 0).unwrap();
    s.assert_serving();
    let want = if daemon_args.is_empty() { 0 } else { 4 };
    // A thread takes its name when it first runs: on a loaded machine give the last one a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let workers = loop {
        let n = thread_names(s.daemon.serving_pid())
            .iter()
            .filter(|n| n.starts_with("fuse-worker"))
            .count();
        if n >= want || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(workers, want, "worker threads with {daemon_args:?}");
}

/// CPU time (user + system, in clock ticks) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A driver that breaks its request ring (an available index far ahead of the ring, or a head
/// outside the descriptor table) gets its queue ignored with one log line: the daemon neither
/// spins on it nor loses the queue's thread, and stays alive for a reset.
#[test]
fn a_broken_available_ring_is_ignored_without_spinning() {
    for case in ["avail index too far ahead", "head outside the table"] {
        for event_idx in [false, true] {
            let copts = ClientOptions {
                wishes: FeatureWishes {
                    event_idx,
                    ..Default::default()
                },
                ..Default::default()
            };
            let mut s = Session::start_with(&DaemonOptions::default(), copts);
            let q = s.client.queue(1).expect("request queue");
            let layout = q.layout();
            let idx = q.avail_idx();
            let mem = s.client.memory().memory();
            if case == "head outside the table" {
                mem.write_obj(0xffffu16.to_le(), layout.avail_slot_addr(idx))
                    .unwrap();
                mem.write_obj(idx.wrapping_add(1).to_le(), layout.avail_idx_addr())
                    .unwrap();
            } else {
                mem.write_obj(idx.wrapping_add(2000).to_le(), layout.avail_idx_addr())
                    .unwrap();
            }
            q.kick_fd().write(1).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            let before = cpu_ticks(s.daemon.serving_pid());
            q.kick_fd().write(1).unwrap();
            std::thread::sleep(std::time::Duration::from_secs(1));
            let used = cpu_ticks(s.daemon.serving_pid()) - before;
            assert!(
                used < 30,
                "{case}, event_idx {event_idx}: the daemon used {used} ticks in 1 s"
            );
            assert!(s.daemon.is_alive(), "{case}: daemon died");
            let log = s.daemon.log_text();
            assert!(
                log.contains("ignored until the frontend resets it"),
                "{case}, event_idx {event_idx}: {log}"
            );
        }
    }
}

/// GET_VRING_BASE stops a ring: the daemon answers with the index it consumed up to (after
/// letting requests in flight finish), serves nothing more on it, and stays alive.
#[test]
fn a_stopped_ring_reports_its_base_and_is_served_no_more() {
    let copts = ClientOptions {
        timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let mut s = Session::start_with(&DaemonOptions::default(), copts);
    for _ in 0..3 {
        s.client.getattr(ROOT_ID, None).expect("GETATTR");
    }
    let consumed = s.client.queue(1).expect("request queue").avail_idx();
    let base = s
        .client
        .frontend_mut()
        .frontend_mut()
        .get_vring_base(1)
        .expect("GET_VRING_BASE answers (no deadlock with an idle queue)");
    assert_eq!(
        base,
        u32::from(consumed),
        "base = the requests the daemon consumed"
    );
    assert!(
        s.client.getattr(ROOT_ID, None).is_err(),
        "a stopped ring must not be served"
    );
    assert!(s.daemon.is_alive(), "daemon died: {}", s.daemon.log_text());
}
