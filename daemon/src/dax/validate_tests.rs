//! Tests of the DAX request validation tables.

use super::*;
use vfsdax_protocol::fuse::flags::{SETUPMAPPING_FLAG_READ as R, SETUPMAPPING_FLAG_WRITE as W};

const P: u64 = 4096;
const MB2: u64 = 2 << 20;

#[test]
fn validate_setup_table() {
    let ws = 16 * MB2;
    type Expect = Option<fn(&DaxError) -> bool>;
    // (foffset, moffset, len, flags, handle_writable, expected error)
    let cases: &[(u64, u64, u64, u64, bool, Expect)] = &[
        // What a Linux guest sends.
        (0, 0, MB2, R, false, None),
        (4 * MB2, 15 * MB2, MB2, R | W, true, None),
        (0, 0, P, 0, false, None),
        (
            0,
            0,
            0,
            R,
            true,
            Some(|e| matches!(e, DaxError::ZeroLength)),
        ),
        (
            1,
            0,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Unaligned { .. })),
        ),
        (
            0,
            1,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Unaligned { .. })),
        ),
        (
            0,
            0,
            P + 1,
            R,
            true,
            Some(|e| matches!(e, DaxError::Unaligned { .. })),
        ),
        (
            0,
            ws,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::OutOfWindow { .. })),
        ),
        (
            0,
            ws - P,
            2 * P,
            R,
            true,
            Some(|e| matches!(e, DaxError::OutOfWindow { .. })),
        ),
        (
            0,
            u64::MAX - P + 1,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Overflow { .. })),
        ),
        (
            u64::MAX - P + 1,
            0,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Overflow { .. })),
        ),
        (
            1 << 63,
            0,
            P,
            R,
            true,
            Some(|e| matches!(e, DaxError::Overflow { .. })),
        ),
        (
            0,
            0,
            P,
            4,
            true,
            Some(|e| matches!(e, DaxError::UnknownFlags { flags: 4 })),
        ),
        (
            0,
            0,
            P,
            R | W,
            false,
            Some(|e| matches!(e, DaxError::NotWritable)),
        ),
        (
            0,
            0,
            P,
            W,
            false,
            Some(|e| matches!(e, DaxError::NotWritable)),
        ),
    ];
    for (i, &(fo, mo, len, flags, hw, expect)) in cases.iter().enumerate() {
        match (validate_setup(ws, P, fo, mo, len, flags, hw), expect) {
            (Ok(()), None) => {}
            (Ok(()), Some(_)) => panic!("case {i} accepted"),
            (Err(e), None) => panic!("case {i} refused: {e}"),
            (Err(e), Some(is)) => assert!(is(&e), "case {i}: {e:?}"),
        }
    }
    assert!(matches!(
        validate_setup(0, P, 0, 0, P, R, true),
        Err(DaxError::Disabled)
    ));
}

#[test]
fn validate_remove_table() {
    let ws = 16 * P;
    assert!(validate_remove(ws, P, 0, ws).is_ok());
    assert!(validate_remove(ws, P, 15 * P, P).is_ok());
    assert!(matches!(
        validate_remove(ws, P, 0, 0),
        Err(DaxError::ZeroLength)
    ));
    assert!(matches!(
        validate_remove(ws, P, 3, P),
        Err(DaxError::Unaligned { .. })
    ));
    assert!(matches!(
        validate_remove(ws, P, ws, P),
        Err(DaxError::OutOfWindow { .. })
    ));
    assert!(matches!(
        validate_remove(ws, P, P, u64::MAX - P + 1),
        Err(DaxError::Overflow { .. })
    ));
    assert!(matches!(
        validate_remove(0, P, 0, P),
        Err(DaxError::Disabled)
    ));
}

#[test]
fn errnos() {
    assert_eq!(DaxError::Disabled.errno(), libc::ENOSYS);
    assert_eq!(DaxError::ZeroLength.errno(), libc::EINVAL);
    assert_eq!(DaxError::UnknownFlags { flags: 8 }.errno(), libc::EINVAL);
    assert_eq!(DaxError::NotWritable.errno(), libc::EACCES);
    let e = DaxError::Mapper(io::Error::from_raw_os_error(libc::ENOMEM));
    assert_eq!(e.errno(), libc::ENOMEM);
    assert_eq!(DaxError::Mapper(io::Error::other("x")).errno(), libc::EIO);
}
