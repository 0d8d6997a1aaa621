//! FUSE request opcodes (`enum fuse_opcode`).

/// Declares the opcode enum with its numeric values and names.
macro_rules! opcodes {
    ($($(#[$meta:meta])* $name:ident = $value:expr,)*) => {
        /// A FUSE request opcode.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Opcode {
            $($(#[$meta])* $name = $value,)*
        }

        impl Opcode {
            /// Every opcode this crate knows, in numeric order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];

            /// The opcode with this number, if it is one this crate knows.
            pub fn from_u32(value: u32) -> Option<Self> {
                match value {
                    $($value => Some(Opcode::$name),)*
                    _ => None,
                }
            }

            /// The kernel's name for the opcode, e.g. `"LOOKUP"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Opcode::$name => stringify!($name),)*
                }
            }
        }
    };
}

opcodes! {
    /// Look up a name in a directory.
    Lookup = 1,
    /// Drop lookup references.
    Forget = 2,
    /// Get attributes.
    Getattr = 3,
    /// Set attributes.
    Setattr = 4,
    /// Read a symlink.
    Readlink = 5,
    /// Create a symlink.
    Symlink = 6,
    /// Create a node.
    Mknod = 8,
    /// Create a directory.
    Mkdir = 9,
    /// Remove a file.
    Unlink = 10,
    /// Remove a directory.
    Rmdir = 11,
    /// Rename.
    Rename = 12,
    /// Create a hard link.
    Link = 13,
    /// Open a file.
    Open = 14,
    /// Read from a file.
    Read = 15,
    /// Write to a file.
    Write = 16,
    /// Filesystem statistics.
    Statfs = 17,
    /// Close a file handle.
    Release = 18,
    /// Flush a file to stable storage.
    Fsync = 20,
    /// Set an extended attribute.
    Setxattr = 21,
    /// Get an extended attribute.
    Getxattr = 22,
    /// List extended attributes.
    Listxattr = 23,
    /// Remove an extended attribute.
    Removexattr = 24,
    /// Called on each close of a file descriptor.
    Flush = 25,
    /// Start the session.
    Init = 26,
    /// Open a directory.
    Opendir = 27,
    /// Read directory entries.
    Readdir = 28,
    /// Close a directory handle.
    Releasedir = 29,
    /// Flush a directory.
    Fsyncdir = 30,
    /// Test for a POSIX lock.
    Getlk = 31,
    /// Acquire or release a POSIX lock.
    Setlk = 32,
    /// Acquire a POSIX lock, waiting.
    Setlkw = 33,
    /// Check access.
    Access = 34,
    /// Create and open a file.
    Create = 35,
    /// Interrupt a pending request.
    Interrupt = 36,
    /// Map a block (block devices only).
    Bmap = 37,
    /// End the session.
    Destroy = 38,
    /// ioctl.
    Ioctl = 39,
    /// poll.
    Poll = 40,
    /// Reply to a notification.
    NotifyReply = 41,
    /// Drop lookup references of many nodes.
    BatchForget = 42,
    /// Allocate or punch space.
    Fallocate = 43,
    /// Read directory entries with their attributes.
    Readdirplus = 44,
    /// Rename with flags.
    Rename2 = 45,
    /// Find data or a hole.
    Lseek = 46,
    /// Copy a range between files.
    CopyFileRange = 47,
    /// Map a file range into the DAX window.
    SetupMapping = 48,
    /// Remove DAX mappings.
    RemoveMapping = 49,
    /// Sync the whole filesystem.
    Syncfs = 50,
    /// Create an unnamed temporary file.
    Tmpfile = 51,
}

#[cfg(test)]
mod tests {
    use super::Opcode;

    #[test]
    fn numbers_round_trip_and_gaps_are_unknown() {
        for &op in Opcode::ALL {
            assert_eq!(Opcode::from_u32(op as u32), Some(op), "{}", op.name());
        }
        assert_eq!(Opcode::from_u32(7), None, "7 was never assigned");
        assert_eq!(Opcode::from_u32(19), None, "19 was never assigned");
        assert_eq!(Opcode::from_u32(4096), None, "CUSE_INIT is not virtio-fs");
        assert_eq!(Opcode::SetupMapping as u32, 48);
        assert_eq!(Opcode::RemoveMapping as u32, 49);
        assert_eq!(Opcode::Syncfs.name(), "Syncfs");
    }
}
