use std::io::{Read, Seek, SeekFrom, Write};

use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::server::testutil::{Guest, MEM_END, REGION_SPLIT};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn reader_reads_across_descriptors() {
    let g = Guest::new();
    g.put(0x1_0000, &[1, 2, 3]);
    g.put(0x2_0000, &[4, 5, 6, 7, 8]);
    let chain = g.chain(&[
        (0x1_0000, 3, false),
        (0x2_0000, 5, false),
        (0x3_0000, 4, true),
    ]);
    let (mut r, w) = split_chain(&g.mem, chain).unwrap();
    assert_eq!(r.available_bytes(), 8);
    assert_eq!(w.available_bytes(), 4);
    let v: u32 = r.read_obj().unwrap();
    assert_eq!(v, u32::from_le_bytes([1, 2, 3, 4]));
    assert_eq!(r.bytes_read(), 4);
    let mut rest = [0u8; 5];
    assert!(r.read_exact(&mut rest).is_err(), "only 4 bytes left");
    assert_eq!(r.available_bytes(), 4, "a failed read consumes nothing");
    r.read_exact(&mut rest[..4]).unwrap();
    assert_eq!(&rest[..4], &[5, 6, 7, 8]);
    assert_eq!(r.available_bytes(), 0);
}

#[test]
fn writer_writes_across_descriptors_and_counts() {
    let g = Guest::new();
    let chain = g.chain(&[
        (0x1_0000, 4, false),
        (0x3_0000, 3, true),
        (0x4_0000, 6, true),
    ]);
    let (_, mut w) = split_chain(&g.mem, chain).unwrap();
    assert!(w.write_all(&[9; 10]).is_err());
    assert_eq!(w.bytes_written(), 0, "a failed write writes nothing");
    w.write_obj(0x0807_0605_0403_0201u64).unwrap();
    assert_eq!(w.bytes_written(), 8);
    assert_eq!(w.available_bytes(), 1);
    assert_eq!(g.get(0x3_0000, 3), vec![1, 2, 3]);
    assert_eq!(g.get(0x4_0000, 5), vec![4, 5, 6, 7, 8]);
}

#[test]
fn writer_split_at_keeps_the_head_for_a_header() {
    let g = Guest::new();
    let chain = g.chain(&[(0x3_0000, 10, true), (0x4_0000, 10, true)]);
    let (_, mut w) = split_chain(&g.mem, chain).unwrap();
    let mut tail = w.split_at(12).unwrap();
    assert_eq!((w.available_bytes(), tail.available_bytes()), (12, 8));
    tail.write_all(&[0xaa; 8]).unwrap();
    w.write_all(&[0xbb; 12]).unwrap();
    assert!(w.write_all(&[0]).is_err());
    assert_eq!(g.get(0x3_0000, 10), vec![0xbb; 10]);
    assert_eq!(
        g.get(0x4_0000, 10),
        [[0xbb; 2].as_slice(), &[0xaa; 8]].concat()
    );
    assert!(tail.split_at(9).is_err());
}

#[test]
fn descriptors_outside_memory_are_errors() {
    let g = Guest::new();
    for writable in [false, true] {
        let chain = g.chain(&[(MEM_END - 4, 8, writable)]);
        let err = split_chain(&g.mem, chain).err().expect("must fail");
        assert!(
            matches!(err, ServerError::DescriptorOutsideMemory { addr, len: 8, .. } if addr == MEM_END - 4),
            "{err}"
        );
        let chain = g.chain(&[(u64::MAX - 2, 8, writable)]);
        assert!(split_chain(&g.mem, chain).is_err());
    }
}

#[test]
fn a_descriptor_may_span_adjacent_regions() {
    let g = Guest::new();
    let data = pattern(64);
    g.put(REGION_SPLIT - 32, &data);
    let chain = g.chain(&[(REGION_SPLIT - 32, 64, false)]);
    let (mut r, _) = split_chain(&g.mem, chain).unwrap();
    let mut buf = vec![0; 64];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(buf, data);
}

#[test]
fn readable_after_writable_is_an_error() {
    let g = Guest::new();
    let chain = g.chain(&[
        (0x1_0000, 4, false),
        (0x3_0000, 4, true),
        (0x2_0000, 4, false),
    ]);
    assert!(matches!(
        split_chain(&g.mem, chain),
        Err(ServerError::ReadableAfterWritable)
    ));
}

#[test]
fn zero_copy_write_from_file_lands_in_guest_memory() {
    let g = Guest::new();
    let data = pattern(10_000);
    let mut f = TempFile::new().unwrap().into_file();
    f.write_all(&data).unwrap();
    let chain = g.chain(&[
        (0x3_0000, 100, true),
        (REGION_SPLIT - 50, 3000, true),
        (0x5_0000, 8000, true),
    ]);
    let (_, mut w) = split_chain(&g.mem, chain).unwrap();
    let mut head = w.split_at(100).unwrap();
    let n = head.write_from(&f, 5000, 1000).unwrap();
    assert_eq!(n, 5000);
    assert_eq!(head.bytes_written(), 5000);
    assert_eq!(g.get(REGION_SPLIT - 50, 3000), &data[1000..4000]);
    assert_eq!(g.get(0x5_0000, 2000), &data[4000..6000]);
    // Reading past the end of the file is a short read.
    let n = head.write_from(&f, 10_000, 9_500).unwrap();
    assert_eq!(n, 500);
    assert_eq!(g.get(0x5_0000 + 2000, 500), &data[9500..]);
    assert_eq!(head.available_bytes(), 8000 + 3000 - 5500);
    // Offsets beyond i64 are refused.
    assert!(head.write_from(&f, 1, u64::MAX).is_err());
}

#[test]
fn zero_copy_read_to_file_comes_from_guest_memory() {
    let g = Guest::new();
    let data = pattern(6000);
    g.put(0x1_0000, &data[..1000]);
    g.put(REGION_SPLIT - 10, &data[1000..]);
    let chain = g.chain(&[(0x1_0000, 1000, false), (REGION_SPLIT - 10, 5000, false)]);
    let (mut r, _) = split_chain(&g.mem, chain).unwrap();
    let mut f = TempFile::new().unwrap().into_file();
    r.truncate(5500);
    assert_eq!(r.available_bytes(), 5500);
    let n = r.read_to(&f, 10_000, 4).unwrap();
    assert_eq!(n, 5500);
    assert_eq!(r.available_bytes(), 0);
    assert_eq!(r.read_to(&f, 10, 0).unwrap(), 0);
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(&back[..4], &[0; 4]);
    assert_eq!(&back[4..], &data[..5500]);
}
