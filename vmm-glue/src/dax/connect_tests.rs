//! Tests of the connect helper against a scripted vhost-user backend speaking the raw protocol,
//! and of the request thread's life cycle.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserMMap, VhostUserShMemConfig};
use vhost::vhost_user::{Backend, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::VhostBackend;
use vm_memory::ByteValued;

use super::*;
use crate::dax::testutil::{pattern, perms_at, read_at, tmpfile};
use crate::dax::window::host_page_size;

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_BACKEND_REQ_FD: u32 = 21;
const GET_SHMEM_CONFIG: u32 = 44;
const SHMEM_MAP: u32 = 9;
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

/// Receives one message: (code, flags, body, attached descriptors).
fn recv(sock: &mut UnixStream) -> Option<(u32, u32, Vec<u8>, Vec<OwnedFd>)> {
    let mut hdr = [0u8; 12];
    let mut cmsg = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    // SAFETY: msg points to live buffers (hdr via iov, cmsg) for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n <= 0 {
        return None;
    }
    let n = n as usize;
    if n < hdr.len() {
        sock.read_exact(&mut hdr[n..]).ok()?;
    }
    let mut fds = Vec::new();
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR walk its control buffer.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a control message inside the buffer recvmsg filled.
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let count = (len - unsafe { libc::CMSG_LEN(0) } as usize) / 4;
            // SAFETY: an SCM_RIGHTS payload is `count` ints, each a descriptor now owned by us.
            let data = unsafe { libc::CMSG_DATA(c) } as *const i32;
            for i in 0..count {
                // SAFETY: see above; read_unaligned because cmsg data need not be aligned.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel installed this descriptor for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `msg` and `c` are valid as above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    let code = u32::from_le_bytes(hdr[0..4].try_into().ok()?);
    let flags = u32::from_le_bytes(hdr[4..8].try_into().ok()?);
    let size = u32::from_le_bytes(hdr[8..12].try_into().ok()?) as usize;
    let mut body = vec![0u8; size];
    sock.read_exact(&mut body).ok()?;
    Some((code, flags, body, fds))
}

fn send(sock: &mut UnixStream, code: u32, flags: u32, body: &[u8]) {
    let mut msg = Vec::with_capacity(12 + body.len());
    msg.extend_from_slice(&code.to_le_bytes());
    msg.extend_from_slice(&flags.to_le_bytes());
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    sock.write_all(&msg).expect("send");
}

/// A scripted backend: answers the negotiation and GET_SHMEM_CONFIG with `sizes`, and returns
/// the request channel it is given (None if the frontend hung up first).
fn fake_backend(mut sock: UnixStream, sizes: Vec<u64>) -> Option<OwnedFd> {
    let protocol = VhostUserProtocolFeatures::SHMEM
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::REPLY_ACK;
    loop {
        let (code, flags, _body, mut fds) = recv(&mut sock)?;
        let reply = |sock: &mut UnixStream, body: &[u8]| {
            send(sock, code, VERSION | REPLY, body);
        };
        match code {
            GET_FEATURES => reply(
                &mut sock,
                &VhostUserVirtioFeatures::PROTOCOL_FEATURES
                    .bits()
                    .to_le_bytes(),
            ),
            GET_PROTOCOL_FEATURES => reply(&mut sock, &protocol.bits().to_le_bytes()),
            GET_SHMEM_CONFIG => {
                let config = VhostUserShMemConfig::new(sizes.len() as u32, &sizes);
                reply(&mut sock, config.as_slice());
            }
            SET_FEATURES | SET_PROTOCOL_FEATURES | SET_BACKEND_REQ_FD => {
                if flags & NEED_REPLY != 0 {
                    reply(&mut sock, &0u64.to_le_bytes());
                }
                if code == SET_BACKEND_REQ_FD {
                    return fds.pop();
                }
            }
            other => panic!("unexpected request {other}"),
        }
    }
}

/// A frontend negotiated with a scripted backend serving `sizes`.
fn negotiated(
    sizes: Vec<u64>,
) -> (
    vhost::vhost_user::Frontend,
    std::thread::JoinHandle<Option<OwnedFd>>,
) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let fake = std::thread::spawn(move || fake_backend(theirs, sizes));
    let mut frontend = vhost::vhost_user::Frontend::from_stream(ours, 1);
    frontend.get_features().expect("get features");
    frontend
        .set_features(VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
        .expect("set features");
    let offered = frontend.get_protocol_features().expect("protocol features");
    frontend
        .set_protocol_features(offered)
        .expect("ack protocol features");
    (frontend, fake)
}

#[test]
fn classify_table() {
    use vhost::vhost_user::Error as E;
    let cases: Vec<(Result<u64, E>, Next)> = vec![
        (Ok(0), Next::Continue),
        (
            Err(E::ReqHandlerError(io::Error::from_raw_os_error(
                libc::EINVAL,
            ))),
            Next::Continue,
        ),
        (
            Err(E::SocketRetry(io::Error::from_raw_os_error(libc::EAGAIN))),
            Next::Continue,
        ),
        (Err(E::Disconnected), Next::PeerGone),
        (Err(E::PartialMessage), Next::PeerGone),
        (
            Err(E::SocketBroken(io::Error::from_raw_os_error(libc::EPIPE))),
            Next::PeerGone,
        ),
        (Err(E::InvalidMessage), Next::Protocol),
        (Err(E::IncorrectFds), Next::Protocol),
        (Err(E::OversizedMsg), Next::Protocol),
    ];
    for (result, next) in cases {
        assert_eq!(classify(&result), next, "{result:?}");
    }
}

#[test]
fn connect_maps_file_bytes_into_the_window() {
    let page = host_page_size();
    let size = 2 * DAX_CHUNK_SIZE;
    let (mut frontend, fake) = negotiated(vec![size]);
    let conn = connect(
        &mut frontend,
        ConnectOptions {
            reply_ack: true,
            observer: None,
            ..Default::default()
        },
    )
    .expect("connect");
    assert_eq!(conn.window().size(), size);
    assert!(!conn.server().is_finished());

    let channel = fake.join().expect("fake backend").expect("request channel");
    let backend = Backend::from_stream(UnixStream::from(channel));
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);

    let data = pattern(4 * page as usize, 77);
    let file = tmpfile(&data);
    let req = VhostUserMMap {
        shmid: 0,
        fd_offset: page,
        shm_offset: DAX_CHUNK_SIZE,
        len: 3 * page,
        flags: 0,
        ..Default::default()
    };
    use vhost::vhost_user::VhostUserFrontendReqHandler;
    backend.shmem_map(&req, &file).expect("map");
    let addr = conn.window().host_addr() + DAX_CHUNK_SIZE;
    // SAFETY: the range was mapped readable by the acknowledged request.
    let seen = unsafe { read_at(addr, 3 * page as usize) };
    assert_eq!(seen, data[page as usize..4 * page as usize]);
    backend.shmem_unmap(&req).expect("unmap");
    assert_eq!(perms_at(addr).as_deref(), Some("---p"));
    assert_eq!(conn.handler().stats().maps, 1);
    assert_eq!(conn.handler().stats().unmaps, 1);

    let (end, window) = conn.stop();
    assert!(matches!(end, ServeEnd::Stopped), "{end:?}");
    assert!(window.table().is_empty());
}

#[test]
fn connect_refuses_a_backend_without_a_region() {
    for sizes in [vec![], vec![0]] {
        let (mut frontend, _fake) = negotiated(sizes.clone());
        let err = connect(&mut frontend, ConnectOptions::default()).expect_err("no region");
        assert!(matches!(err, ConnectError::NoRegion), "{sizes:?}: {err:?}");
    }
}

#[test]
fn connect_refuses_windows_too_large_or_not_in_chunks() {
    let (mut frontend, _fake) = negotiated(vec![DEFAULT_MAX_WINDOW + DAX_CHUNK_SIZE]);
    let err = connect(&mut frontend, ConnectOptions::default()).expect_err("too large");
    assert!(matches!(err, ConnectError::TooLarge { .. }), "{err:?}");
    let (mut frontend, _fake) = negotiated(vec![4 * DAX_CHUNK_SIZE]);
    let small = ConnectOptions {
        max_window: 2 * DAX_CHUNK_SIZE,
        ..Default::default()
    };
    let err = connect(&mut frontend, small).expect_err("over the VMM's own limit");
    assert!(
        matches!(err, ConnectError::TooLarge { size, max } if size == 4 * DAX_CHUNK_SIZE && max == 2 * DAX_CHUNK_SIZE),
        "{err:?}"
    );
    let (mut frontend, _fake) = negotiated(vec![DAX_CHUNK_SIZE + host_page_size()]);
    let err = connect(&mut frontend, ConnectOptions::default()).expect_err("not in chunks");
    assert!(matches!(err, ConnectError::NotChunked(_)), "{err:?}");
}

#[test]
fn a_malformed_request_ends_the_thread_and_closes_the_channel() {
    let (mut frontend, fake) = negotiated(vec![DAX_CHUNK_SIZE]);
    let conn = connect(&mut frontend, ConnectOptions::default()).expect("connect");
    let channel = fake.join().expect("fake backend").expect("request channel");
    let mut raw = UnixStream::from(channel);
    // A SHMEM_MAP with zero length and no descriptor: vhost refuses the message itself.
    let req = VhostUserMMap::default();
    send(&mut raw, SHMEM_MAP, VERSION, req.as_slice());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !conn.server().is_finished() {
        assert!(Instant::now() < deadline, "request thread did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The channel is closed: the backend sees EOF instead of waiting forever.
    raw.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    match raw.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "the channel is still open"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    let (end, _) = conn.stop();
    assert!(matches!(end, ServeEnd::Protocol(_)), "{end:?}");
}

#[test]
fn an_idle_server_stops_promptly_and_on_drop() {
    let page = host_page_size();
    let window = Arc::new(DaxWindow::new(4 * page).expect("reserve"));
    let handler = Arc::new(DaxRequestHandler::new(window));
    let server = DaxServer::spawn(FrontendReqHandler::new(Arc::clone(&handler)).expect("channel"))
        .expect("spawn");
    assert!(!server.is_finished());
    assert!(matches!(server.stop(), ServeEnd::Stopped));
    let server = DaxServer::spawn(FrontendReqHandler::new(Arc::clone(&handler)).expect("channel"))
        .expect("spawn");
    drop(server);
    // Both threads are gone, so only this test holds the handler.
    assert_eq!(Arc::strong_count(&handler), 1);
}
