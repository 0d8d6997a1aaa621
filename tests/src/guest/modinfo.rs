//! Kernel module metadata (`.modinfo`) and load order.
//!
//! Debian's kernel package ships no `modules.dep`, so the load order is worked out from the
//! `depends=` field each module carries in its `.modinfo` section (NUL-separated `key=value`).

use std::collections::{BTreeMap, BTreeSet};

/// Errors working out a module load order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModinfoError {
    /// A module needed (asked for, or depended upon) is not available.
    #[error("kernel module {name} is not available (needed by {needed_by})")]
    Missing {
        /// The module that was not found.
        name: String,
        /// Who needed it: another module, or "the caller".
        needed_by: String,
    },
    /// The dependencies loop.
    #[error("kernel modules depend on each other in a cycle through {0}")]
    Cycle(String),
}

/// What a module's `.modinfo` says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// The module's name (`name=`), e.g. `virtio_pci`.
    pub name: String,
    /// The modules it depends on (`depends=`), in the order listed.
    pub depends: Vec<String>,
}

/// Normalises a module name the way the kernel does: `-` and `_` are the same.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses a `.modinfo` section. `fallback_name` is used when it has no `name=` field.
pub fn parse_modinfo(section: &[u8], fallback_name: &str) -> ModInfo {
    let mut name = None;
    let mut depends = Vec::new();
    for field in section.split(|&b| b == 0) {
        let field = String::from_utf8_lossy(field);
        if let Some(v) = field.strip_prefix("name=") {
            name = Some(normalise(v));
        } else if let Some(v) = field.strip_prefix("depends=") {
            depends.extend(v.split(',').filter(|d| !d.is_empty()).map(normalise));
        }
    }
    ModInfo {
        name: name.unwrap_or_else(|| normalise(fallback_name)),
        depends,
    }
}

/// Returns `wanted` plus everything they depend on, each module after its dependencies.
///
/// `lookup` returns a module's info, or `None` when no such module is available. Among modules
/// with no ordering constraint the order of `wanted` is kept.
pub fn load_order<F>(wanted: &[&str], mut lookup: F) -> Result<Vec<ModInfo>, ModinfoError>
where
    F: FnMut(&str) -> Option<ModInfo>,
{
    #[derive(PartialEq)]
    enum Mark {
        InProgress,
        Done,
    }
    fn visit<F: FnMut(&str) -> Option<ModInfo>>(
        name: &str,
        needed_by: &str,
        lookup: &mut F,
        marks: &mut BTreeMap<String, Mark>,
        out: &mut Vec<ModInfo>,
    ) -> Result<(), ModinfoError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::InProgress) => return Err(ModinfoError::Cycle(name.to_owned())),
            None => {}
        }
        let info = lookup(name).ok_or_else(|| ModinfoError::Missing {
            name: name.to_owned(),
            needed_by: needed_by.to_owned(),
        })?;
        marks.insert(name.to_owned(), Mark::InProgress);
        for dep in &info.depends {
            visit(dep, name, lookup, marks, out)?;
        }
        marks.insert(name.to_owned(), Mark::Done);
        out.push(info);
        Ok(())
    }

    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        let name = normalise(name);
        if seen.insert(name.clone()) {
            visit(&name, "the caller", &mut lookup, &mut marks, &mut out)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made-up `.modinfo` sections shaped like the Debian 6.1 cloud kernel's.
    fn fake_modules() -> BTreeMap<&'static str, &'static [u8]> {
        BTreeMap::from([
            ("virtio_ring", &b"license=GPL\0depends=\0name=virtio_ring\0"[..]),
            ("virtio_pci_modern_dev", b"depends=\0name=virtio_pci_modern_dev\0"),
            ("virtio_pci_legacy_dev", b"name=virtio_pci_legacy_dev\0depends=\0"),
            ("virtio", b"alias=x\0depends=virtio_ring\0name=virtio\0"),
            (
                "virtio_pci",
                b"depends=virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio\0name=virtio_pci\0",
            ),
            ("fuse", b"depends=\0name=fuse\0intree=Y\0"),
            ("virtiofs", b"depends=fuse,virtio,virtio_ring\0name=virtiofs\0"),
        ])
    }

    fn lookup(name: &str) -> Option<ModInfo> {
        fake_modules()
            .get(name)
            .map(|section| parse_modinfo(section, name))
    }

    fn names(order: &[ModInfo]) -> Vec<&str> {
        order.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn parses_fields() {
        let info = parse_modinfo(
            b"license=GPL\0depends=fuse,virtio-ring\0name=virtiofs\0\0",
            "x",
        );
        assert_eq!(info.name, "virtiofs");
        assert_eq!(info.depends, vec!["fuse", "virtio_ring"]);
        let info = parse_modinfo(b"depends=\0", "virtio-ring");
        assert_eq!(info.name, "virtio_ring");
        assert!(info.depends.is_empty());
    }

    #[test]
    fn orders_dependencies_first() {
        let order = load_order(&["virtiofs", "virtio_pci"], lookup).unwrap();
        assert_eq!(
            names(&order),
            [
                "fuse",
                "virtio_ring",
                "virtio",
                "virtiofs",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci"
            ]
        );
        for (i, m) in order.iter().enumerate() {
            for dep in &m.depends {
                let at = order.iter().position(|o| &o.name == dep).unwrap();
                assert!(at < i, "{dep} must come before {}", m.name);
            }
        }
    }

    #[test]
    fn keeps_the_callers_order_when_free() {
        let wanted = [
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio",
            "virtio_pci",
            "fuse",
            "virtiofs",
        ];
        let order = load_order(&wanted, lookup).unwrap();
        assert_eq!(names(&order), wanted);
        let again = load_order(&["virtio-pci", "virtio_pci"], lookup).unwrap();
        assert_eq!(
            again.len(),
            5,
            "duplicates and dash spellings are one module"
        );
    }

    #[test]
    fn reports_missing_and_cycles() {
        let err = load_order(
            &["virtiofs"],
            |n| if n == "fuse" { None } else { lookup(n) },
        );
        assert_eq!(
            err,
            Err(ModinfoError::Missing {
                name: "fuse".into(),
                needed_by: "virtiofs".into()
            })
        );
        let cyclic = |n: &str| {
            let deps = match n {
                "a" => "b",
                "b" => "c",
                _ => "a",
            };
            Some(parse_modinfo(
                format!("name={n}\0depends={deps}\0").as_bytes(),
                n,
            ))
        };
        assert!(matches!(
            load_order(&["a"], cyclic),
            Err(ModinfoError::Cycle(_))
        ));
    }
}
