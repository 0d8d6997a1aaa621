//! The vhost-user frontend of the host-side driver: connects to a vhost-user-fs daemon, negotiates
//! features, shares guest memory and hands over the virtqueues.

use std::path::Path;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};

use super::memory::{GuestMem, MemoryError};
use super::queue::DriverQueue;

/// `VIRTIO_RING_F_INDIRECT_DESC` feature bit.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX` feature bit.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES` feature bit.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1` feature bit.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Queue index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
/// Queue index of the (first) request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Queues the driver uses: hiprio and one request queue.
pub const NUM_QUEUES: usize = 2;

/// Errors of the vhost-user handshake.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Connecting to the daemon's socket failed.
    #[error("cannot connect to the vhost-user socket {path}")]
    Connect {
        /// The socket path.
        path: String,
        /// The underlying error.
        #[source]
        source: vhost::Error,
    },
    /// A vhost-user request failed.
    #[error("vhost-user {step} failed")]
    Request {
        /// The request, e.g. `"SET_MEM_TABLE"`.
        step: &'static str,
        /// The underlying error.
        #[source]
        source: vhost::Error,
    },
    /// The daemon does not offer a feature the driver cannot do without.
    #[error("the daemon does not offer {0}")]
    MissingFeature(&'static str),
    /// The daemon has fewer queues than the driver needs.
    #[error("the daemon offers {offered} queues, {needed} are needed")]
    TooFewQueues {
        /// Queues the daemon offers.
        offered: u64,
        /// Queues needed.
        needed: usize,
    },
    /// A ring address cannot be translated to our mapping.
    #[error("cannot translate a ring address")]
    Memory(#[source] MemoryError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, FrontendError>;

fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Request { step, source }
}

/// What the driver asks for beyond the mandatory `VIRTIO_F_VERSION_1` and protocol features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureWishes {
    /// Ask for `VIRTIO_RING_F_EVENT_IDX`.
    pub event_idx: bool,
    /// Ask for `VIRTIO_RING_F_INDIRECT_DESC`.
    pub indirect: bool,
    /// Ask for `REPLY_ACK` (every request then waits for the daemon's ack).
    pub reply_ack: bool,
}

impl Default for FeatureWishes {
    fn default() -> Self {
        FeatureWishes {
            event_idx: true,
            indirect: true,
            reply_ack: true,
        }
    }
}

/// The virtio features to ack: what we wish for, among what the daemon offers.
pub fn select_features(offered: u64, wishes: FeatureWishes) -> u64 {
    let mut want = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
    if wishes.event_idx {
        want |= VIRTIO_RING_F_EVENT_IDX;
    }
    if wishes.indirect {
        want |= VIRTIO_RING_F_INDIRECT_DESC;
    }
    offered & want
}

/// The protocol features to ack: among MQ, REPLY_ACK, BACKEND_REQ, BACKEND_SEND_FD and SHMEM,
/// what the daemon offers (never CONFIG: the driver reads no device config).
pub fn select_protocol_features(
    offered: VhostUserProtocolFeatures,
    wishes: FeatureWishes,
) -> VhostUserProtocolFeatures {
    let mut want = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::SHMEM;
    if wishes.reply_ack {
        want |= VhostUserProtocolFeatures::REPLY_ACK;
    }
    offered & want
}

/// A connected, feature-negotiated vhost-user-fs frontend.
pub struct FsFrontend {
    frontend: Frontend,
    features: u64,
    protocol_features: VhostUserProtocolFeatures,
}

impl std::fmt::Debug for FsFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsFrontend")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol_features", &self.protocol_features)
            .finish_non_exhaustive()
    }
}

impl FsFrontend {
    /// Connects to `path` and negotiates features: SET_OWNER, GET/SET_FEATURES,
    /// GET/SET_PROTOCOL_FEATURES (and GET_QUEUE_NUM with MQ).
    pub fn connect(path: &Path, wishes: FeatureWishes) -> Result<Self> {
        let mut frontend = Frontend::connect(path, NUM_QUEUES as u64).map_err(|source| {
            FrontendError::Connect {
                path: path.display().to_string(),
                source,
            }
        })?;
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(step("GET_FEATURES"))?;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(FrontendError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if offered & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(FrontendError::MissingFeature(
                "VHOST_USER_F_PROTOCOL_FEATURES",
            ));
        }
        let features = select_features(offered, wishes);
        frontend
            .set_features(features)
            .map_err(step("SET_FEATURES"))?;
        let offered_proto = frontend
            .get_protocol_features()
            .map_err(step("GET_PROTOCOL_FEATURES"))?;
        let protocol_features = select_protocol_features(offered_proto, wishes);
        frontend
            .set_protocol_features(protocol_features)
            .map_err(step("SET_PROTOCOL_FEATURES"))?;
        if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            let n = frontend.get_queue_num().map_err(step("GET_QUEUE_NUM"))?;
            if n < NUM_QUEUES as u64 {
                return Err(FrontendError::TooFewQueues {
                    offered: n,
                    needed: NUM_QUEUES,
                });
            }
        }
        Ok(FsFrontend {
            frontend,
            features,
            protocol_features,
        })
    }

    /// Shares guest memory with the daemon (SET_MEM_TABLE with the memfd).
    pub fn set_mem_table(&mut self, mem: &GuestMem) -> Result<()> {
        self.frontend
            .set_mem_table(&mem.region_infos())
            .map_err(step("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Hands queue `index` to the daemon: SET_VRING_NUM, ADDR, BASE, KICK, CALL, ENABLE.
    pub fn setup_queue(&mut self, index: usize, mem: &GuestMem, queue: &DriverQueue) -> Result<()> {
        let l = queue.layout();
        let host = |a| mem.host_address(a).map_err(FrontendError::Memory);
        let config = VringConfigData {
            queue_max_size: l.size,
            queue_size: l.size,
            flags: 0,
            desc_table_addr: host(l.desc)?,
            used_ring_addr: host(l.used)?,
            avail_ring_addr: host(l.avail)?,
            log_addr: None,
        };
        let f = &mut self.frontend;
        f.set_vring_num(index, l.size)
            .map_err(step("SET_VRING_NUM"))?;
        f.set_vring_addr(index, &config)
            .map_err(step("SET_VRING_ADDR"))?;
        f.set_vring_base(index, 0).map_err(step("SET_VRING_BASE"))?;
        f.set_vring_kick(index, queue.kick_fd())
            .map_err(step("SET_VRING_KICK"))?;
        f.set_vring_call(index, queue.call_fd())
            .map_err(step("SET_VRING_CALL"))?;
        f.set_vring_enable(index, true)
            .map_err(step("SET_VRING_ENABLE"))?;
        Ok(())
    }

    /// The acked virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The acked vhost-user protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` was acked.
    pub fn event_idx(&self) -> bool {
        self.features & VIRTIO_RING_F_EVENT_IDX != 0
    }

    /// Whether `VIRTIO_RING_F_INDIRECT_DESC` was acked.
    pub fn indirect(&self) -> bool {
        self.features & VIRTIO_RING_F_INDIRECT_DESC != 0
    }

    /// The underlying vhost-user frontend (for `get_shmem_config`, `set_backend_request_fd`).
    pub fn frontend(&self) -> &Frontend {
        &self.frontend
    }

    /// The underlying vhost-user frontend, mutably.
    pub fn frontend_mut(&mut self) -> &mut Frontend {
        &mut self.frontend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_the_intersection_of_wishes_and_offer() {
        let all = u64::MAX;
        let w = FeatureWishes::default();
        assert_eq!(
            select_features(all, w),
            VIRTIO_F_VERSION_1
                | VHOST_USER_F_PROTOCOL_FEATURES
                | VIRTIO_RING_F_EVENT_IDX
                | VIRTIO_RING_F_INDIRECT_DESC
        );
        let no_idx = FeatureWishes {
            event_idx: false,
            ..w
        };
        assert_eq!(select_features(all, no_idx) & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_eq!(
            select_features(VIRTIO_F_VERSION_1 | (1 << 3), w),
            VIRTIO_F_VERSION_1,
            "never acks what is not offered or not wanted"
        );
    }

    #[test]
    fn protocol_features_never_include_config() {
        let offered = VhostUserProtocolFeatures::all();
        let got = select_protocol_features(offered, FeatureWishes::default());
        assert!(!got.contains(VhostUserProtocolFeatures::CONFIG));
        assert!(got.contains(
            VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::SHMEM
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD
        ));
        let no_ack = FeatureWishes {
            reply_ack: false,
            ..FeatureWishes::default()
        };
        assert!(!select_protocol_features(offered, no_ack)
            .contains(VhostUserProtocolFeatures::REPLY_ACK));
        assert_eq!(
            select_protocol_features(VhostUserProtocolFeatures::CONFIG, FeatureWishes::default()),
            VhostUserProtocolFeatures::empty()
        );
    }
}
