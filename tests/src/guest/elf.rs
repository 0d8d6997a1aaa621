//! Just enough ELF64 reading to find a kernel module's `.modinfo` section and to tell a static
//! executable from a dynamic one.

/// Errors reading an ELF file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// The data does not start with the ELF magic.
    #[error("not an ELF file")]
    NotElf,
    /// The file is ELF but not 64-bit little-endian.
    #[error("not a 64-bit little-endian ELF file")]
    Unsupported,
    /// A header, table or section lies outside the file.
    #[error("truncated ELF file: {0} lies outside the data")]
    Truncated(&'static str),
}

const PT_INTERP: u32 = 3;

fn read<const N: usize>(data: &[u8], at: u64, what: &'static str) -> Result<[u8; N], ElfError> {
    let at = usize::try_from(at).map_err(|_| ElfError::Truncated(what))?;
    let end = at.checked_add(N).ok_or(ElfError::Truncated(what))?;
    let bytes = data.get(at..end).ok_or(ElfError::Truncated(what))?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

fn u16_at(data: &[u8], at: u64, what: &'static str) -> Result<u16, ElfError> {
    read::<2>(data, at, what).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], at: u64, what: &'static str) -> Result<u32, ElfError> {
    read::<4>(data, at, what).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], at: u64, what: &'static str) -> Result<u64, ElfError> {
    read::<8>(data, at, what).map(u64::from_le_bytes)
}

fn slice<'a>(data: &'a [u8], off: u64, len: u64, what: &'static str) -> Result<&'a [u8], ElfError> {
    let start = usize::try_from(off).map_err(|_| ElfError::Truncated(what))?;
    let len = usize::try_from(len).map_err(|_| ElfError::Truncated(what))?;
    let end = start.checked_add(len).ok_or(ElfError::Truncated(what))?;
    data.get(start..end).ok_or(ElfError::Truncated(what))
}

fn check_header(data: &[u8]) -> Result<(), ElfError> {
    if data.len() < 4 || &data[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if data.len() < 64 {
        return Err(ElfError::Truncated("ELF header"));
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
    if data[4] != 2 || data[5] != 1 {
        return Err(ElfError::Unsupported);
    }
    Ok(())
}

/// Returns the contents of the section called `name`, or `None` if there is none.
pub fn section<'a>(data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_header(data)?;
    let shoff = u64_at(data, 0x28, "section header offset")?;
    let shentsize = u64::from(u16_at(data, 0x3a, "section header size")?);
    let shnum = u64::from(u16_at(data, 0x3c, "section count")?);
    let shstrndx = u64::from(u16_at(data, 0x3e, "section name table index")?);
    let header = |i: u64| -> Result<(u32, u64, u64), ElfError> {
        let base = shoff + i * shentsize;
        Ok((
            u32_at(data, base, "section header")?,
            u64_at(data, base + 24, "section header")?,
            u64_at(data, base + 32, "section header")?,
        ))
    };
    let (_, names_off, names_len) = header(shstrndx)?;
    let names = slice(data, names_off, names_len, "section name table")?;
    for i in 0..shnum {
        let (name_at, off, len) = header(i)?;
        let Some(rest) = names.get(name_at as usize..) else {
            continue;
        };
        let this = rest.split(|&b| b == 0).next().unwrap_or_default();
        if this == name.as_bytes() {
            return slice(data, off, len, "section").map(Some);
        }
    }
    Ok(None)
}

/// Whether an executable is statically linked (it has no `PT_INTERP` program header).
pub fn is_static(data: &[u8]) -> Result<bool, ElfError> {
    check_header(data)?;
    let phoff = u64_at(data, 0x20, "program header offset")?;
    let phentsize = u64::from(u16_at(data, 0x36, "program header size")?);
    let phnum = u64::from(u16_at(data, 0x38, "program header count")?);
    for i in 0..phnum {
        if u32_at(data, phoff + i * phentsize, "program header")? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Test helpers shared with other modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    /// Builds a minimal ELF64 LE file with the given sections and program header types.
    pub(crate) fn fake_elf(sections: &[(&str, &[u8])], phdr_types: &[u32]) -> Vec<u8> {
        let mut names = vec![0u8];
        let mut name_offsets = Vec::new();
        for (name, _) in sections
            .iter()
            .chain(std::iter::once(&(".shstrtab", &[][..])))
        {
            name_offsets.push(names.len() as u32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        // Program headers right after the ELF header.
        let phoff = out.len() as u64;
        for t in phdr_types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&ph);
        }
        // Section contents.
        let mut placed = Vec::new();
        for (_, body) in sections {
            placed.push((out.len() as u64, body.len() as u64));
            out.extend_from_slice(body);
        }
        placed.push((out.len() as u64, names.len() as u64));
        out.extend_from_slice(&names);
        // Section headers: a null one, then ours.
        let shoff = out.len() as u64;
        out.extend_from_slice(&[0u8; 64]);
        for (i, (off, len)) in placed.iter().enumerate() {
            let mut sh = vec![0u8; 64];
            sh[..4].copy_from_slice(&name_offsets[i].to_le_bytes());
            sh[24..32].copy_from_slice(&off.to_le_bytes());
            sh[32..40].copy_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&sh);
        }
        out[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        out[0x38..0x3a].copy_from_slice(&(phdr_types.len() as u16).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&(placed.len() as u16 + 1).to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&(placed.len() as u16).to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::fake_elf;
    use super::*;

    #[test]
    fn finds_sections_by_name() {
        let elf = fake_elf(&[(".text", b"code"), (".modinfo", b"name=x\0")], &[]);
        assert_eq!(section(&elf, ".modinfo").unwrap(), Some(&b"name=x\0"[..]));
        assert_eq!(section(&elf, ".text").unwrap(), Some(&b"code"[..]));
        assert_eq!(section(&elf, ".data").unwrap(), None);
    }

    #[test]
    fn tells_static_from_dynamic() {
        assert!(is_static(&fake_elf(&[], &[1, 1])).unwrap());
        assert!(!is_static(&fake_elf(&[], &[1, PT_INTERP])).unwrap());
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(section(b"hello", ".modinfo"), Err(ElfError::NotElf));
        let mut elf = fake_elf(&[(".modinfo", b"a")], &[]);
        elf[4] = 1;
        assert_eq!(section(&elf, ".modinfo"), Err(ElfError::Unsupported));
        let elf = fake_elf(&[(".modinfo", b"a")], &[]);
        let cut = &elf[..elf.len() - 40];
        assert!(matches!(
            section(cut, ".modinfo"),
            Err(ElfError::Truncated(_))
        ));
    }
}
