//! Wiring a DAX window to a connected vhost-user backend: read the shared memory configuration,
//! reserve the window, hand the backend a request channel and serve it on a thread.
//!
//! The vhost-user feature negotiation (including acking `SHMEM | BACKEND_REQ | BACKEND_SEND_FD`
//! and, if wanted, `REPLY_ACK`) is the caller's; [`connect`] runs after it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;
use vhost::vhost_user::{Frontend, FrontendReqHandler, VhostUserFrontend};
use vmm_sys_util::eventfd::EventFd;

use super::handler::{DaxObserver, DaxRequestHandler, DAX_CHUNK_SIZE};
use super::window::{DaxWindow, WindowError};

/// Errors of connecting a DAX window to a backend.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// `GET_SHMEM_CONFIG` failed (SHMEM not negotiated, or the backend failed).
    #[error("cannot read the backend's shared memory configuration")]
    ShmemConfig(#[source] vhost::Error),
    /// The backend reported no cache region (region 0 missing or of size 0).
    #[error("the backend has no shared memory region 0")]
    NoRegion,
    /// The backend asked for a window larger than the VMM allows.
    #[error("the backend asks for a {size:#x}-byte window, more than the {max:#x} bytes allowed")]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// [`ConnectOptions::max_window`].
        max: u64,
    },
    /// The window size is not a whole number of DAX chunks.
    #[error("the backend's window of {0:#x} bytes is not a multiple of the 2 MiB DAX chunk")]
    NotChunked(u64),
    /// Reserving the window failed.
    #[error("cannot reserve the DAX window")]
    Window(#[from] WindowError),
    /// Creating the backend request channel failed.
    #[error("cannot create the backend request channel")]
    Channel(#[source] vhost::vhost_user::Error),
    /// `SET_BACKEND_REQ_FD` failed (BACKEND_REQ not negotiated, or the backend failed).
    #[error("cannot give the backend its request channel")]
    SetBackendRequestFd(#[source] vhost::Error),
    /// Creating the stop event or the serving thread failed.
    #[error("cannot start the request thread")]
    Thread(#[source] io::Error),
}

/// How the request thread ended.
///
/// `FrontendReqHandler` keeps its own copy of the sending end of the channel, so a backend that
/// merely exits does not make the receiving end see end-of-file: the thread then keeps waiting
/// until [`DaxServer::stop`] (the VMM notices the backend is gone on the main socket).
#[derive(Debug)]
pub enum ServeEnd {
    /// [`DaxServer::stop`] was called.
    Stopped,
    /// The backend closed or broke its end of the channel.
    PeerGone(vhost::vhost_user::Error),
    /// The backend sent something the channel cannot recover from (the channel is closed, so a
    /// backend waiting for a reply sees the disconnection rather than hanging).
    Protocol(vhost::vhost_user::Error),
    /// Waiting for requests failed.
    Poll(io::Error),
}

/// What to do after one `handle_request` result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Serve the next request.
    Continue,
    /// The peer went away: stop.
    PeerGone,
    /// The channel is no longer usable: stop.
    Protocol,
}

/// Classifies a `FrontendReqHandler::handle_request` result. A request the handler refused has
/// already been answered, so serving continues; a message the channel could not parse may have
/// left the stream out of step, so serving stops.
pub fn classify(result: &Result<u64, vhost::vhost_user::Error>) -> Next {
    use vhost::vhost_user::Error as E;
    match result {
        Ok(_) | Err(E::ReqHandlerError(_)) | Err(E::SocketRetry(_)) => Next::Continue,
        Err(E::Disconnected) | Err(E::SocketBroken(_)) | Err(E::PartialMessage) => Next::PeerGone,
        Err(_) => Next::Protocol,
    }
}

/// The thread serving a backend request channel.
#[derive(Debug)]
pub struct DaxServer {
    stop: EventFd,
    thread: Option<JoinHandle<ServeEnd>>,
}

impl DaxServer {
    /// Serves `channel` on a new thread until [`DaxServer::stop`], disconnection or a protocol
    /// error.
    pub fn spawn(mut channel: FrontendReqHandler<DaxRequestHandler>) -> io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_fd = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("vfsdax-dax-req".into())
            .spawn(move || loop {
                let mut fds = [
                    libc::pollfd {
                        fd: channel.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stop_fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: `fds` is a valid array of two pollfd for the duration of the call, and
                // both descriptors are owned by this thread's captures.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return ServeEnd::Poll(e);
                }
                if fds[1].revents != 0 {
                    return ServeEnd::Stopped;
                }
                if fds[0].revents == 0 {
                    continue;
                }
                let result = channel.handle_request();
                match (classify(&result), result) {
                    (Next::Continue, _) | (_, Ok(_)) => {}
                    (Next::PeerGone, Err(e)) => return ServeEnd::PeerGone(e),
                    (Next::Protocol, Err(e)) => return ServeEnd::Protocol(e),
                }
            })?;
        Ok(DaxServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the thread has ended (by itself, or after a stop).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the thread (if it is still running) and tells how it ended.
    pub fn stop(mut self) -> ServeEnd {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> ServeEnd {
        let Some(thread) = self.thread.take() else {
            return ServeEnd::Stopped;
        };
        // If this write fails the counter is saturated, which also makes the eventfd readable.
        let _ = self.stop.write(1);
        thread.join().unwrap_or(ServeEnd::Poll(io::Error::other(
            "the DAX request thread panicked",
        )))
    }
}

impl Drop for DaxServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The largest window [`connect`] reserves unless told otherwise: 64 GiB of address space
/// (reserved inaccessible, no memory).
pub const DEFAULT_MAX_WINDOW: u64 = 64 << 30;

/// Options of [`connect`].
pub struct ConnectOptions {
    /// Whether `REPLY_ACK` was negotiated: the backend then waits for a reply to every request.
    pub reply_ack: bool,
    /// Reported every request the handler serves.
    pub observer: Option<DaxObserver>,
    /// The largest window the backend may ask for ([`DEFAULT_MAX_WINDOW`] by default).
    pub max_window: u64,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            reply_ack: false,
            observer: None,
            max_window: DEFAULT_MAX_WINDOW,
        }
    }
}

/// A DAX window connected to a backend, with the thread serving its requests.
#[derive(Debug)]
pub struct DaxConnection {
    // Declared first so it is stopped before the rest is dropped.
    server: DaxServer,
    window: Arc<DaxWindow>,
    handler: Arc<DaxRequestHandler>,
}

impl DaxConnection {
    /// The window (register `host_addr()`/`size()` as a memslot at the region's guest address).
    pub fn window(&self) -> &Arc<DaxWindow> {
        &self.window
    }

    /// The request handler (for its counters).
    pub fn handler(&self) -> &Arc<DaxRequestHandler> {
        &self.handler
    }

    /// The serving thread.
    pub fn server(&self) -> &DaxServer {
        &self.server
    }

    /// Stops serving and tells how the thread ended; the window stays reserved until the
    /// returned `Arc` (and every other one) is dropped.
    pub fn stop(self) -> (ServeEnd, Arc<DaxWindow>) {
        let DaxConnection { server, window, .. } = self;
        (server.stop(), window)
    }
}

/// Reads region 0's size with `GET_SHMEM_CONFIG`, reserves a window of that size, gives the
/// backend a request channel with `SET_BACKEND_REQ_FD` and serves it on a thread.
pub fn connect(
    frontend: &mut Frontend,
    options: ConnectOptions,
) -> Result<DaxConnection, ConnectError> {
    let config = frontend
        .get_shmem_config()
        .map_err(ConnectError::ShmemConfig)?;
    let nregions = config.nregions;
    let sizes = config.memory_sizes;
    let size = match (nregions, sizes.first()) {
        (1.., Some(&size)) if size != 0 => size,
        _ => return Err(ConnectError::NoRegion),
    };
    if size > options.max_window {
        return Err(ConnectError::TooLarge {
            size,
            max: options.max_window,
        });
    }
    if !size.is_multiple_of(DAX_CHUNK_SIZE) {
        return Err(ConnectError::NotChunked(size));
    }
    let window = Arc::new(DaxWindow::new(size)?);
    let handler = Arc::new(match options.observer {
        Some(o) => DaxRequestHandler::with_observer(Arc::clone(&window), o),
        None => DaxRequestHandler::new(Arc::clone(&window)),
    });
    let mut channel =
        FrontendReqHandler::new(Arc::clone(&handler)).map_err(ConnectError::Channel)?;
    channel.set_reply_ack_flag(options.reply_ack);
    // The backend gets the sending end; `channel` itself (its AsRawFd) is the receiving end.
    frontend
        .set_backend_request_fd(&channel.get_tx_raw_fd())
        .map_err(ConnectError::SetBackendRequestFd)?;
    let server = DaxServer::spawn(channel).map_err(ConnectError::Thread)?;
    Ok(DaxConnection {
        server,
        window,
        handler,
    })
}

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
