//! Which extended attribute names a guest may use, and under which host names
//! (`--xattrmap`, virtiofsd's grammar; [`XattrMap::default_policy`] without it).
//!
//! A map is a list of rules, each `<sep>type<sep>scope<sep>key<sep>prepend<sep>` where `<sep>`
//! is the rule's first non-blank character (`:prefix:all::user.virtiofs.:`). The first rule
//! that matches a name decides; a name no rule matches is refused.
//! - scope `client` rules match the guest's names (GETXATTR, SETXATTR, REMOVEXATTR) by their
//!   start against `key`; `server` rules match host names (LISTXATTR) against `prepend`;
//!   `all` rules do both.
//! - `prefix`: a guest name gets `prepend` in front on the host; a host name starting with
//!   `prepend` loses it for the guest.
//! - `ok`: the name as it is.
//! - `bad`: refused (SETXATTR and REMOVEXATTR `EPERM`, GETXATTR `ENODATA`), hidden from lists.
//! - `unsupported`: refused with `ENOTSUP` (the guest then falls back as on a filesystem
//!   without that attribute, e.g. a default SELinux label), hidden from lists.
//! - `<sep>map<sep>key<sep>prepend<sep>`, only as the last rule: `prefix` for names starting
//!   with `key` (every name if `key` is empty), hiding the host names that would collide, and
//!   `ok` for the rest.

use std::borrow::Cow;

use thiserror::Error;

/// What a rule does with a name it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleType {
    /// Add (guest to host) or strip (host to guest) `prepend`.
    Prefix,
    /// Pass the name on unchanged.
    Ok,
    /// Refuse it (`EPERM`, `ENODATA` for GETXATTR) and hide it.
    Bad,
    /// Refuse it with `ENOTSUP` and hide it.
    Unsupported,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What it does.
    pub kind: RuleType,
    /// Whether it matches the guest's names (by `key`).
    pub client: bool,
    /// Whether it matches host names (by `prepend`).
    pub server: bool,
    /// The start of the guest names it matches.
    pub key: Vec<u8>,
    /// The host prefix (`prefix`), or the start of the host names it matches.
    pub prepend: Vec<u8>,
}

impl Rule {
    fn new(kind: RuleType, client: bool, server: bool, key: &[u8], prepend: &[u8]) -> Rule {
        Rule {
            kind,
            client,
            server,
            key: key.to_vec(),
            prepend: prepend.to_vec(),
        }
    }
}

/// Why a guest's name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A `bad` rule, or no rule.
    Bad,
    /// An `unsupported` rule.
    Unsupported,
}

impl Refused {
    /// The errno for GETXATTR.
    pub fn get_errno(self) -> i32 {
        match self {
            Refused::Bad => libc::ENODATA,
            Refused::Unsupported => libc::EOPNOTSUPP,
        }
    }

    /// The errno for SETXATTR and REMOVEXATTR.
    pub fn set_errno(self) -> i32 {
        match self {
            Refused::Bad => libc::EPERM,
            Refused::Unsupported => libc::EOPNOTSUPP,
        }
    }
}

/// Errors parsing `--xattrmap`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum XattrMapError {
    /// Nothing but blanks.
    #[error("--xattrmap has no rule")]
    Empty,
    /// A rule ends before all its fields.
    #[error("--xattrmap rule {0} is incomplete: it needs type, scope, key and prepend, each closed by the separator")]
    Incomplete(usize),
    /// An unknown type.
    #[error("--xattrmap rule {0}: unknown type {1:?} (prefix, ok, bad, unsupported or map)")]
    Type(usize, String),
    /// An unknown scope.
    #[error("--xattrmap rule {0}: unknown scope {1:?} (client, server or all)")]
    Scope(usize, String),
    /// A `map` rule that is not the last one.
    #[error("--xattrmap rule {0}: a map rule must be the last one")]
    MapNotLast(usize),
}

/// The rules, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XattrMap {
    rules: Vec<Rule>,
}

impl XattrMap {
    /// The policy without `--xattrmap`: `user.*`, the POSIX ACLs and `security.capability`
    /// (which the guest kernel reads to exec files; SETXATTR of it is refused apart) as they
    /// are; `trusted.*` refused (the host's own: overlayfs keeps its metadata there);
    /// `security.*` (SELinux, IMA, EVM, Smack, AppArmor labels: the host's policy) and other
    /// `system.*` unsupported; nothing else.
    pub fn default_policy() -> XattrMap {
        use RuleType::*;
        let both = |kind, name: &[u8]| Rule::new(kind, true, true, name, name);
        XattrMap {
            rules: vec![
                both(Ok, b"user."),
                both(Ok, b"system.posix_acl_access"),
                both(Ok, b"system.posix_acl_default"),
                both(Ok, b"security.capability"),
                both(Bad, b"trusted."),
                both(Unsupported, b"security."),
                both(Unsupported, b"system."),
                both(Bad, b""),
            ],
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Parses a `--xattrmap` value.
    pub fn parse(s: &str) -> Result<XattrMap, XattrMapError> {
        let mut rules = Vec::new();
        let mut rest = s.trim_start();
        let mut n = 0;
        while let Some(sep) = rest.chars().next() {
            n += 1;
            let body = &rest[sep.len_utf8()..];
            let mut fields = Vec::new();
            let mut tail = body;
            // `map` has three fields, the others four: read the type first.
            while fields.len() < 4 {
                let Some(end) = tail.find(sep) else {
                    return Err(XattrMapError::Incomplete(n));
                };
                fields.push(&tail[..end]);
                tail = &tail[end + sep.len_utf8()..];
                if fields.len() == 3 && fields[0] == "map" {
                    break;
                }
            }
            if fields[0] == "map" {
                if !tail.trim().is_empty() {
                    return Err(XattrMapError::MapNotLast(n));
                }
                rules.extend(map_rules(fields[1].as_bytes(), fields[2].as_bytes()));
                return Ok(XattrMap { rules });
            }
            let kind = match fields[0] {
                "prefix" => RuleType::Prefix,
                "ok" => RuleType::Ok,
                "bad" => RuleType::Bad,
                "unsupported" => RuleType::Unsupported,
                t => return Err(XattrMapError::Type(n, t.to_string())),
            };
            let (client, server) = match fields[1] {
                "client" => (true, false),
                "server" => (false, true),
                "all" => (true, true),
                sc => return Err(XattrMapError::Scope(n, sc.to_string())),
            };
            rules.push(Rule::new(
                kind,
                client,
                server,
                fields[2].as_bytes(),
                fields[3].as_bytes(),
            ));
            rest = tail.trim_start();
        }
        if rules.is_empty() {
            return Err(XattrMapError::Empty);
        }
        Ok(XattrMap { rules })
    }

    /// The host name for the guest's `name`, or why it is refused.
    pub fn to_host<'a>(&self, name: &'a [u8]) -> Result<Cow<'a, [u8]>, Refused> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.client && name.starts_with(&r.key))
            .ok_or(Refused::Bad)?;
        match rule.kind {
            RuleType::Prefix => Ok(Cow::Owned([&rule.prepend[..], name].concat())),
            RuleType::Ok => Ok(Cow::Borrowed(name)),
            RuleType::Bad => Err(Refused::Bad),
            RuleType::Unsupported => Err(Refused::Unsupported),
        }
    }

    /// The guest's name for the host's `name`, or `None` if the guest does not see it.
    pub fn to_guest<'a>(&self, name: &'a [u8]) -> Option<&'a [u8]> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.server && name.starts_with(&r.prepend))?;
        match rule.kind {
            RuleType::Prefix => Some(&name[rule.prepend.len()..]),
            RuleType::Ok => Some(name),
            RuleType::Bad | RuleType::Unsupported => None,
        }
    }

    /// A host `listxattr` buffer (names each closed by a NUL) as the guest sees it.
    pub fn list_to_guest(&self, host: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(host.len());
        for name in host.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if let Some(g) = self.to_guest(name) {
                // A prefix rule may leave nothing of the name: no such attribute for the guest.
                if !g.is_empty() {
                    out.extend_from_slice(g);
                    out.push(0);
                }
            }
        }
        out
    }
}

/// The rules a `map` rule stands for (as virtiofsd expands it).
fn map_rules(key: &[u8], prepend: &[u8]) -> Vec<Rule> {
    let mut rules = vec![Rule::new(RuleType::Prefix, true, true, key, prepend)];
    if key.is_empty() {
        // Everything is prefixed: hide whatever else the host has.
        rules.push(Rule::new(RuleType::Bad, true, true, b"", b""));
    } else {
        // Host names that start with `key` unprefixed would pose as the guest's: hidden.
        rules.push(Rule::new(RuleType::Bad, false, true, b"", key));
        // The guest may not name the prefixed attributes directly.
        rules.push(Rule::new(RuleType::Bad, true, false, prepend, b""));
        rules.push(Rule::new(RuleType::Ok, true, true, b"", b""));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(m: &XattrMap, n: &str) -> Result<String, Refused> {
        m.to_host(n.as_bytes())
            .map(|c| String::from_utf8(c.into_owned()).unwrap())
    }

    fn guest(m: &XattrMap, n: &str) -> Option<String> {
        m.to_guest(n.as_bytes())
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
    }

    #[test]
    fn the_default_policy_keeps_the_hosts_attributes_out_of_reach() {
        let m = XattrMap::default_policy();
        for ok in [
            "user.mime_type",
            "system.posix_acl_access",
            "system.posix_acl_default",
            "security.capability",
        ] {
            assert_eq!(host(&m, ok).as_deref(), Ok(ok));
            assert_eq!(guest(&m, ok).as_deref(), Some(ok));
        }
        assert_eq!(host(&m, "trusted.overlay.opaque"), Err(Refused::Bad));
        assert_eq!(guest(&m, "trusted.overlay.opaque"), None);
        for unsupported in [
            "security.selinux",
            "security.ima",
            "security.evm",
            "system.nfs4_acl",
        ] {
            assert_eq!(host(&m, unsupported), Err(Refused::Unsupported));
            assert_eq!(guest(&m, unsupported), None);
        }
        assert_eq!(host(&m, "other.x"), Err(Refused::Bad));
        assert_eq!(Refused::Bad.get_errno(), libc::ENODATA);
        assert_eq!(Refused::Bad.set_errno(), libc::EPERM);
        assert_eq!(Refused::Unsupported.set_errno(), libc::EOPNOTSUPP);
        let list = b"user.a\0trusted.overlay.origin\0security.selinux\0system.posix_acl_access\0";
        assert_eq!(
            m.list_to_guest(list),
            b"user.a\0system.posix_acl_access\0".to_vec()
        );
    }

    #[test]
    fn virtiofsds_examples_parse_and_map() {
        // Prefix everything with user.virtiofs., hide the host's other attributes.
        let m = XattrMap::parse(":prefix:all::user.virtiofs.::bad:all:::").unwrap();
        assert_eq!(
            host(&m, "trusted.x").as_deref(),
            Ok("user.virtiofs.trusted.x")
        );
        assert_eq!(
            guest(&m, "user.virtiofs.trusted.x").as_deref(),
            Some("trusted.x")
        );
        assert_eq!(guest(&m, "security.selinux"), None);
        // Prefix trusted., stop the guest naming the prefix, pass the rest (with newlines).
        let m = XattrMap::parse(
            "/prefix/all/trusted./user.virtiofs./\n /bad/server//trusted./\n \
             /bad/client/user.virtiofs.//\n /ok/all///",
        )
        .unwrap();
        assert_eq!(m.rules().len(), 4);
        assert_eq!(
            host(&m, "trusted.a").as_deref(),
            Ok("user.virtiofs.trusted.a")
        );
        assert_eq!(host(&m, "user.virtiofs.x"), Err(Refused::Bad));
        assert_eq!(host(&m, "user.x").as_deref(), Ok("user.x"));
        assert_eq!(guest(&m, "trusted.a"), None);
        assert_eq!(
            guest(&m, "user.virtiofs.trusted.a").as_deref(),
            Some("trusted.a")
        );
        // SELinux unsupported, the rest as is.
        let m = XattrMap::parse("/unsupported/all/security.selinux/security.selinux//ok/all///")
            .unwrap();
        assert_eq!(host(&m, "security.selinux"), Err(Refused::Unsupported));
        assert_eq!(host(&m, "trusted.x").as_deref(), Ok("trusted.x"));
    }

    #[test]
    fn a_map_rule_expands_like_virtiofsds() {
        let m = XattrMap::parse(":map:trusted.:user.virtiofs.:").unwrap();
        assert_eq!(m.rules().len(), 4);
        assert_eq!(
            host(&m, "trusted.x").as_deref(),
            Ok("user.virtiofs.trusted.x")
        );
        assert_eq!(host(&m, "user.virtiofs.trusted.x"), Err(Refused::Bad));
        assert_eq!(host(&m, "user.y").as_deref(), Ok("user.y"));
        assert_eq!(guest(&m, "trusted.host-own"), None);
        assert_eq!(
            guest(&m, "user.virtiofs.trusted.x").as_deref(),
            Some("trusted.x")
        );
        assert_eq!(guest(&m, "user.y").as_deref(), Some("user.y"));
        let all = XattrMap::parse(" :map::user.virtiofs.: ").unwrap();
        assert_eq!(all.rules().len(), 2);
        assert_eq!(guest(&all, "user.z"), None);
        // A prefix that leaves no name is no attribute.
        assert_eq!(all.list_to_guest(b"user.virtiofs.\0"), Vec::<u8>::new());
    }

    #[test]
    fn malformed_maps_name_the_rule() {
        assert_eq!(XattrMap::parse("  "), Err(XattrMapError::Empty));
        assert_eq!(
            XattrMap::parse(":ok:all::"),
            Err(XattrMapError::Incomplete(1))
        );
        assert_eq!(
            XattrMap::parse(":ok:all::::bogus:all:::"),
            Err(XattrMapError::Type(2, "bogus".into()))
        );
        assert_eq!(
            XattrMap::parse(":ok:everyone:::"),
            Err(XattrMapError::Scope(1, "everyone".into()))
        );
        assert_eq!(
            XattrMap::parse(":map:a:b::ok:all:::"),
            Err(XattrMapError::MapNotLast(1))
        );
        // A multi-byte separator works, and no rule leaves a name unrefused by accident.
        let m = XattrMap::parse("§ok§client§user.§§").unwrap();
        assert_eq!(host(&m, "user.a").as_deref(), Ok("user.a"));
        assert_eq!(host(&m, "trusted.a"), Err(Refused::Bad));
        assert_eq!(guest(&m, "user.a"), None, "no server rule: hidden");
    }
}
