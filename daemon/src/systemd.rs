//! systemd integration: readiness and status notification (`Type=notify` services).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `"READY=1"`) to the notification socket at `path`; a leading `@` names
/// an abstract socket, as systemd passes it in `$NOTIFY_SOCKET`.
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Sends `state` to systemd when running under it (`$NOTIFY_SOCKET` set); does nothing
/// otherwise.
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(path) if !path.is_empty() => notify_to(&path, state),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("vfsdax-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("vfsdax-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx2 = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), "STATUS=serving").unwrap();
        let n = rx2.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=serving");
        assert!(notify_to(dir.join("absent").to_str().unwrap(), "READY=1").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
