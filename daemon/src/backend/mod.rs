//! The vhost-user-fs device: queues, features and config space, on top of
//! `vhost-user-backend`. Each popped descriptor chain goes to the FUSE [`Server`].
//!
//! Queue 0 is the high-priority queue (FORGET, INTERRUPT), queues 1.. carry requests. Every
//! queue is served on its own thread (`queues_per_thread`), so a slow request on one queue does
//! not hold up FORGETs.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use thiserror::Error;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserShMemConfig};
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::dax::{BackendMapper, MapperSlot};
use crate::filesystem::FileSystem;
use crate::guest_log;
use crate::server::Server;

mod pool;
mod queue;

use pool::WorkerPool;
use queue::QueueState;

/// The high-priority queue (FORGET, INTERRUPT): always served inline.
const HIPRIO_QUEUE: u16 = 0;

/// `VHOST_USER_F_PROTOCOL_FEATURES`, a vhost-user feature bit in the virtio feature word.
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
/// Length of the tag in `struct virtio_fs_config`.
pub const TAG_LEN: usize = 36;
pub use vfsdax_protocol::dax::CACHE_SHMID;

/// Errors in the device setup and the queue loop.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The tag does not fit the config space.
    #[error("tag {0:?} is longer than {TAG_LEN} bytes or empty")]
    Tag(String),
    /// An event arrived for a queue that does not exist.
    #[error("event for unknown queue {0}")]
    UnknownQueue(u16),
    /// A kick arrived before the frontend sent the guest memory table.
    #[error("queue kicked before the memory table was set")]
    NoMemory,
    /// The used ring could not be updated.
    #[error("cannot update the used ring of queue {queue}")]
    UsedRing {
        /// The queue.
        queue: u16,
        /// The virtqueue error.
        #[source]
        source: virtio_queue::Error,
    },
    /// The worker threads' exit events could not be created.
    #[error("cannot create the queue threads' exit events")]
    ExitEvent(#[source] io::Error),
    /// The frontend could not be notified.
    #[error("cannot signal queue {queue}")]
    Signal {
        /// The queue.
        queue: u16,
        /// The eventfd error.
        #[source]
        source: io::Error,
    },
}

impl From<BackendError> for io::Error {
    fn from(e: BackendError) -> Self {
        io::Error::other(e)
    }
}

/// Static configuration of the device.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Tag offered in the config space; `None` does not offer the CONFIG protocol feature
    /// (QEMU 7.1 to 8.0 crash when a backend offers it).
    pub tag: Option<String>,
    /// Number of request queues (the high-priority queue comes on top).
    pub num_request_queues: u16,
    /// Maximum queue size.
    pub queue_size: u16,
    /// Size of the DAX window; 0 disables DAX (no SHMEM features offered).
    pub cache_size: u64,
    /// Worker threads serving the request queues; 0 serves each on its queue's thread.
    pub thread_pool_size: usize,
}

/// Builds `struct virtio_fs_config` (tag, then `num_request_queues` little-endian).
pub fn config_space(tag: &str, num_request_queues: u16) -> Result<[u8; TAG_LEN + 4], BackendError> {
    if tag.is_empty() || tag.len() > TAG_LEN {
        return Err(BackendError::Tag(tag.to_string()));
    }
    let mut cfg = [0u8; TAG_LEN + 4];
    cfg[..tag.len()].copy_from_slice(tag.as_bytes());
    cfg[TAG_LEN..].copy_from_slice(&u32::from(num_request_queues).to_le_bytes());
    Ok(cfg)
}

/// The vhost-user-fs backend.
pub struct FsBackend<F: FileSystem> {
    server: Arc<Server<F>>,
    config: DeviceConfig,
    config_space: Option<[u8; TAG_LEN + 4]>,
    event_idx: AtomicBool,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap<()>>>>,
    mapper: Arc<MapperSlot>,
    /// One exit event per queue thread: the event loops watch them, and
    /// `VringEpollHandler::send_exit_event` ends the threads when the connection is over.
    exit_events: Vec<(EventConsumer, EventNotifier)>,
    /// Per queue: broken, requests in flight, generation.
    queues: Vec<Arc<QueueState>>,
    /// `--thread-pool-size`: serve request queues on this many worker threads (0: inline).
    pool_size: usize,
    /// The worker pool, started at the first kick (after the signal mask is set up).
    pool: OnceLock<Option<WorkerPool>>,
}

/// How long stopping a ring waits for its requests in flight. Bounded: a request may itself
/// wait on the frontend (SHMEM_MAP), which is busy waiting for the ring to stop.
const STOP_WAIT: Duration = Duration::from_secs(1);

impl<F: FileSystem + 'static> FsBackend<F> {
    /// A backend serving `server`.
    pub fn new(server: Arc<Server<F>>, config: DeviceConfig) -> Result<Self, BackendError> {
        let config_space = match &config.tag {
            Some(tag) => Some(config_space(tag, config.num_request_queues)?),
            None => None,
        };
        let exit_events = (0..=config.num_request_queues)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BackendError::ExitEvent)?;
        Ok(FsBackend {
            queues: (0..=config.num_request_queues)
                .map(|_| Arc::new(QueueState::default()))
                .collect(),
            pool_size: config.thread_pool_size,
            pool: OnceLock::new(),
            exit_events,
            server,
            config,
            config_space,
            event_idx: AtomicBool::new(false),
            mem: RwLock::new(None),
            mapper: Arc::new(MapperSlot::new()),
        })
    }

    /// The FUSE server.
    pub fn server(&self) -> &Arc<Server<F>> {
        &self.server
    }

    /// The mapper of the current frontend connection (empty until the frontend opens the
    /// backend request channel), shared.
    pub fn mapper(&self) -> Arc<dyn crate::dax::Mapper> {
        self.mapper.clone()
    }

    /// The worker pool for request queues, if `--thread-pool-size` asked for one.
    fn pool(&self, queue: u16) -> Option<&WorkerPool> {
        if queue == HIPRIO_QUEUE || self.pool_size == 0 {
            return None;
        }
        self.pool
            .get_or_init(|| {
                match WorkerPool::new(self.pool_size, usize::from(self.config.queue_size)) {
                    Ok(pool) => Some(pool),
                    Err(e) => {
                        log::error!("cannot start the worker pool, serving inline: {e}");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Pops every available chain of `vring` and serves it, inline or on the worker pool;
    /// each served chain goes back to the used ring. Returns whether any chain was popped.
    ///
    /// A chain the server cannot serve is returned with length 0. A ring the driver broke (an
    /// available index too far ahead, a head outside the table, rings outside guest memory)
    /// is an error: the caller marks the queue broken until the frontend stops it.
    fn process_queue(&self, queue: u16, vring: &VringRwLock) -> Result<bool, BackendError> {
        let state = self
            .queues
            .get(usize::from(queue))
            .ok_or(BackendError::UnknownQueue(queue))?;
        let atomic = self.mem.read().unwrap_or_else(|e| e.into_inner()).clone();
        let atomic = atomic.ok_or(BackendError::NoMemory)?;
        let mem = atomic.memory();
        let pool = self.pool(queue);
        let mut popped = false;
        let mut used_any = false;
        loop {
            let popped_chain = {
                let mut vs = vring.get_mut();
                let q = vs.get_queue_mut();
                if !q.ready() {
                    break;
                }
                // `iter` (unlike `pop_descriptor_chain`) reports an available index that runs
                // more than a ring's length ahead, instead of looking empty forever.
                let mut avail = q
                    .iter(mem.clone())
                    .map_err(|source| BackendError::UsedRing { queue, source })?;
                // Counted in flight under the vring lock: see `QueueState::begin`.
                avail.next().map(|chain| (chain, state.begin()))
            };
            let Some((chain, generation)) = popped_chain else {
                break;
            };
            popped = true;
            let head = chain.head_index();
            if let Some(pool) = pool {
                let (server, mapper) = (self.server.clone(), self.mapper.clone());
                let (state, vring, mem) = (state.clone(), vring.clone(), mem.clone());
                pool.execute(Box::new(move || {
                    // The ring was stopped (and maybe handed to a new driver) while this job
                    // waited: its request must not run against memory that may be reused.
                    if state.generation() != generation {
                        state.end();
                        return;
                    }
                    let len = serve_chain(&server, &*mem, chain, &*mapper, queue);
                    let done = state.complete(&vring, generation, head, len);
                    let signalled = match done {
                        Ok(true) => signal_if_needed(&vring, queue),
                        Ok(false) => Ok(()),
                        Err(source) => Err(BackendError::UsedRing { queue, source }),
                    };
                    if let Err(e) = signalled {
                        state.mark_broken();
                        guest_log!(
                            log::Level::Error,
                            "queue {queue} ignored until the frontend resets it: {e}"
                        );
                    }
                    state.end();
                }));
                continue;
            }
            let len = serve_chain(&self.server, &*mem, chain, &*self.mapper, queue);
            let done = state.complete(vring, generation, head, len);
            state.end();
            // A completion for a ring the frontend stopped meanwhile is dropped: stop here.
            if !done.map_err(|source| BackendError::UsedRing { queue, source })? {
                break;
            }
            used_any = true;
        }
        if used_any {
            signal_if_needed(vring, queue)?;
        }
        Ok(popped)
    }

    /// Serves a kick on `queue`. Errors are the driver's (a broken ring): they are logged
    /// (rate-limited) and the queue is ignored until the frontend stops and restarts it, so
    /// the queue's thread lives on and never spins on a ring it cannot make progress on.
    fn serve_kick(&self, queue: u16, vring: &VringRwLock) {
        let Some(state) = self.queues.get(usize::from(queue)) else {
            return;
        };
        if state.is_broken() {
            return;
        }
        if let Err(e) = self.serve_kick_inner(queue, vring) {
            state.mark_broken();
            guest_log!(
                log::Level::Error,
                "queue {queue} ignored until the frontend resets it: {e}"
            );
        }
    }

    fn serve_kick_inner(&self, queue: u16, vring: &VringRwLock) -> Result<(), BackendError> {
        if !self.event_idx.load(Ordering::Acquire) {
            self.process_queue(queue, vring)?;
            return Ok(());
        }
        // With EVENT_IDX: keep going until the driver has added nothing new between our last
        // pop and re-enabling notifications; stop after a pass that made no progress.
        loop {
            vring
                .disable_notification()
                .map_err(|source| BackendError::UsedRing { queue, source })?;
            let progressed = self.process_queue(queue, vring)?;
            let more = vring
                .enable_notification()
                .map_err(|source| BackendError::UsedRing { queue, source })?;
            if !more || !progressed {
                return Ok(());
            }
        }
    }
}

impl<F: FileSystem + 'static> VhostUserBackend for FsBackend<F> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.config.num_request_queues) + 1
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.config.queue_size)
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        if self.config_space.is_some() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        if self.config.cache_size > 0 {
            f |= VhostUserProtocolFeatures::SHMEM
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD;
        }
        f
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let Some(cfg) = &self.config_space else {
            return Vec::new();
        };
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= cfg.len() => cfg[start..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap<()>>) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        log::info!(
            "the frontend opened the backend request channel: DAX map requests can reach it"
        );
        self.mapper.set(Some(Box::new(BackendMapper::new(backend))));
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        if self.config.cache_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "DAX is disabled",
            ));
        }
        log::info!(
            "the frontend asked for the shared memory regions: offering a {} MiB DAX window",
            self.config.cache_size >> 20
        );
        Ok(VhostUserShMemConfig::new(1, &[self.config.cache_size]))
    }

    fn reset_device(&self) {
        self.mapper.set(None);
        // The frontend unmaps everything at a device reset: forget, do not unmap.
        self.server.fs().destroy(&crate::dax::NoMapper);
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = self.exit_events.get(thread_index)?;
        Some((consumer.try_clone().ok()?, notifier.try_clone().ok()?))
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        // One queue per thread: `device_event` indexes the thread's own vrings and the thread
        // id is the queue number.
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or(BackendError::UnknownQueue(device_event))?;
        let queue = u16::try_from(thread_id).unwrap_or(u16::MAX);
        self.serve_kick(queue, vring);
        Ok(())
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: let the requests in flight on this ring complete (bounded) so their
        // replies reach the guest before the frontend reads the ring's state; a completion
        // after that is dropped (`QueueState::complete`). A ring the old driver broke may be
        // served again once the frontend restarts it.
        if let Some(state) = usize::try_from(queue_index)
            .ok()
            .and_then(|q| self.queues.get(q))
        {
            if state.stopped(STOP_WAIT) {
                log::warn!("queue {queue_index} stopped with a request still in flight");
            }
        }
        Ok(())
    }
}

/// Serves one chain; a chain the server cannot serve is returned with length 0 and a
/// rate-limited log line.
fn serve_chain<F, M, T>(
    server: &Server<F>,
    mem: &M,
    chain: virtio_queue::DescriptorChain<T>,
    mapper: &dyn crate::dax::Mapper,
    queue: u16,
) -> u32
where
    F: FileSystem,
    M: vm_memory::GuestMemory + ?Sized,
    T: std::ops::Deref,
    T::Target: vm_memory::GuestMemory,
{
    match server.handle_chain(mem, chain, mapper) {
        Ok(len) => len,
        Err(e) => {
            guest_log!(
                log::Level::Warn,
                "queue {queue}: dropped a request chain: {e}"
            );
            0
        }
    }
}

/// Signals the driver that `vring` has new used entries, unless EVENT_IDX says it need not.
fn signal_if_needed(vring: &VringRwLock, queue: u16) -> Result<(), BackendError> {
    let notify = vring
        .needs_notification()
        .map_err(|source| BackendError::UsedRing { queue, source })?;
    if notify {
        vring
            .signal_used_queue()
            .map_err(|source| BackendError::Signal { queue, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout() {
        let cfg = config_space("myfs", 3).unwrap();
        assert_eq!(&cfg[..4], b"myfs");
        assert!(cfg[4..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&cfg[TAG_LEN..], &3u32.to_le_bytes());
        assert!(config_space("", 1).is_err());
        assert!(config_space(&"x".repeat(TAG_LEN + 1), 1).is_err());
        assert!(config_space(&"x".repeat(TAG_LEN), 1).is_ok());
    }
}
