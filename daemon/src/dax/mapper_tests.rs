//! Tests of the mappers: [`NoMapper`], [`MapperSlot`], and [`BackendMapper`] over a real
//! vhost-user backend request channel.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use super::testutil::{file, Call, Recorder};
use super::*;

const P: u64 = 4096;
const MB2: u64 = 2 << 20;

#[test]
fn no_mapper_and_slot() {
    let f = file();
    assert_eq!(
        NoMapper.map(0, P, &f, 0, false).unwrap_err().raw_os_error(),
        Some(libc::ENOSYS)
    );
    assert_eq!(
        NoMapper.unmap(0, P).unwrap_err().raw_os_error(),
        Some(libc::ENOSYS)
    );
    let slot = MapperSlot::new();
    assert!(!slot.is_set());
    assert_eq!(
        slot.unmap(0, P).unwrap_err().raw_os_error(),
        Some(libc::ENOSYS)
    );
    let rec = Arc::new(Recorder::default());
    struct Shared(Arc<Recorder>);
    impl Mapper for Shared {
        fn map(&self, a: u64, b: u64, f: &File, c: u64, w: bool) -> io::Result<()> {
            self.0.map(a, b, f, c, w)
        }
        fn unmap(&self, a: u64, b: u64) -> io::Result<()> {
            self.0.unmap(a, b)
        }
    }
    slot.set(Some(Box::new(Shared(Arc::clone(&rec)))));
    slot.map(P, P, &f, 0, true).expect("map");
    slot.unmap(P, P).expect("unmap");
    assert_eq!(
        rec.calls(),
        vec![Call::Map(P, P, 0, true), Call::Unmap(P, P)]
    );
    slot.set(None);
    assert!(slot.map(P, P, &f, 0, true).is_err());
}

/// (shmid, fd_offset, shm_offset, len, flags, inode of the attached file).
type Seen = (u8, u64, u64, u64, u64, Option<u64>);

/// The frontend side of a request channel, recording requests and answering `answer`.
struct Frontend {
    seen: Mutex<Vec<Seen>>,
    answer: Option<i32>,
}

impl VhostUserFrontendReqHandler for Frontend {
    fn shmem_map(
        &self,
        req: &VhostUserMMap,
        fd: &dyn AsRawFd,
    ) -> vhost::vhost_user::HandlerResult<u64> {
        let VhostUserMMap {
            shmid,
            fd_offset,
            shm_offset,
            len,
            flags,
            ..
        } = *req;
        self.seen.lock().expect("seen").push((
            shmid,
            fd_offset,
            shm_offset,
            len,
            flags,
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .ok()
                .map(|m| m.ino()),
        ));
        self.answer
            .map_or(Ok(0), |n| Err(io::Error::from_raw_os_error(n)))
    }
    fn shmem_unmap(&self, req: &VhostUserMMap) -> vhost::vhost_user::HandlerResult<u64> {
        let VhostUserMMap {
            shmid,
            fd_offset,
            shm_offset,
            len,
            flags,
            ..
        } = *req;
        self.seen
            .lock()
            .expect("seen")
            .push((shmid, fd_offset, shm_offset, len, flags, None));
        self.answer
            .map_or(Ok(0), |n| Err(io::Error::from_raw_os_error(n)))
    }
}

fn channel(
    answer: Option<i32>,
) -> (
    Backend,
    vhost::vhost_user::FrontendReqHandler<Frontend>,
    Arc<Frontend>,
) {
    let fe = Arc::new(Frontend {
        seen: Mutex::new(Vec::new()),
        answer,
    });
    let mut server = vhost::vhost_user::FrontendReqHandler::new(Arc::clone(&fe)).expect("channel");
    server.set_reply_ack_flag(true);
    // SAFETY: dup only creates a new descriptor; the result is checked before use.
    let tx = unsafe { libc::dup(server.get_tx_raw_fd()) };
    assert!(tx >= 0);
    // SAFETY: `tx` is a fresh descriptor from dup that nothing else owns.
    let backend = Backend::from_stream(UnixStream::from(unsafe { OwnedFd::from_raw_fd(tx) }));
    backend.set_reply_ack_flag(true);
    (backend, server, fe)
}

#[test]
fn backend_mapper_sends_region_0_requests() {
    let (backend, mut server, fe) = channel(None);
    backend.set_shmem_flag(true);
    let serve = std::thread::spawn(move || {
        (0..2)
            .map(|_| server.handle_request().is_ok())
            .collect::<Vec<_>>()
    });
    let mapper = BackendMapper::new(backend);
    let f = file();
    mapper.map(4 * MB2, MB2, &f, 2 * MB2, true).expect("map");
    mapper.unmap(4 * MB2, MB2).expect("unmap");
    assert_eq!(serve.join().expect("server"), vec![true, true]);
    let ino = f.metadata().expect("stat").ino();
    assert_eq!(
        *fe.seen.lock().expect("seen"),
        vec![
            (0, 2 * MB2, 4 * MB2, MB2, 1, Some(ino)),
            (0, 0, 4 * MB2, MB2, 0, None)
        ]
    );
}

#[test]
fn backend_mapper_errnos() {
    // The frontend refuses: vhost 0.18 loses its errno, we report EIO.
    let (backend, mut server, _fe) = channel(Some(libc::EINVAL));
    backend.set_shmem_flag(true);
    let serve = std::thread::spawn(move || server.handle_request().is_err());
    let mapper = BackendMapper::new(backend);
    let f = file();
    let e = mapper.map(0, P, &f, 0, false).expect_err("refused");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(serve.join().expect("server"));

    // SHMEM not enabled on the channel.
    let (backend, _server, _fe) = channel(None);
    let e = BackendMapper::new(backend)
        .unmap(0, P)
        .expect_err("no shmem");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSYS));

    // The frontend went away.
    let (backend, server, fe) = channel(None);
    backend.set_shmem_flag(true);
    drop(server);
    drop(fe);
    let e = BackendMapper::new(backend).unmap(0, P).expect_err("gone");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
}

#[test]
fn backend_errno_table() {
    use vhost::vhost_user::Error as E;
    let wrap = |e: E| io::Error::other(e);
    assert_eq!(
        backend_errno(&io::Error::from_raw_os_error(libc::EPERM)),
        libc::EPERM
    );
    assert_eq!(backend_errno(&wrap(E::FrontendInternalError)), libc::EIO);
    assert_eq!(backend_errno(&wrap(E::Disconnected)), libc::ENOTCONN);
    assert_eq!(backend_errno(&wrap(E::PartialMessage)), libc::ENOTCONN);
    assert_eq!(
        backend_errno(&wrap(E::SocketBroken(io::Error::from_raw_os_error(
            libc::EPIPE
        )))),
        libc::ENOTCONN
    );
    assert_eq!(backend_errno(&wrap(E::InvalidMessage)), libc::EIO);
    assert_eq!(
        backend_errno(&io::Error::other("SHMEM feature not negotiated")),
        libc::ENOSYS
    );
    assert_eq!(
        backend_errno(&io::Error::from(io::ErrorKind::Other)),
        libc::EIO
    );
}
