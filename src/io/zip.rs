//! A ZIP archive writer, store only (no compression): how a browser tab hands a PEFT adapter
//! directory to the user as one download.
//!
//! Layout (PKWARE APPNOTE 6.3): per file a local header (signature `PK\x03\x04`) then its bytes;
//! then one central-directory record per file (`PK\x01\x02`) and the end record (`PK\x05\x06`).
//! Method 0 (stored), CRC-32 (IEEE, reflected, polynomial `0xEDB88320`), sizes in 32 bits, so
//! each file and the archive must stay under 4 GiB (adapters are megabytes). Times are the DOS
//! epoch, 1980-01-01 00:00: the archive depends on nothing but its contents.

/// Errors from building an archive.
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    /// A file or the archive passes the 4 GiB of a 32-bit ZIP.
    #[error("{0}: too large for a ZIP archive without ZIP64 (4 GiB)")]
    TooLarge(String),
}

/// CRC-32 (IEEE 802.3) of `bytes`, as ZIP and gzip store it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A stored ZIP archive of `files`, `(name, contents)`, in that order. Names use `/` for
/// folders, e.g. `adapter/adapter_config.json`.
pub fn store(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, ZipError> {
    let small =
        |n: usize, what: &str| u32::try_from(n).map_err(|_| ZipError::TooLarge(what.into()));
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = small(out.len(), name)?;
        let size = small(data.len(), name)?;
        let name_len = u16::try_from(name.len()).map_err(|_| ZipError::TooLarge(name.clone()))?;
        let crc = crc32(data);
        // Local file header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
        out.extend_from_slice(&0x0800u16.to_le_bytes()); // flags: UTF-8 names
        out.extend_from_slice(&0u16.to_le_bytes()); // method: stored
        out.extend_from_slice(&0u16.to_le_bytes()); // time 00:00
        out.extend_from_slice(&0x0021u16.to_le_bytes()); // date 1980-01-01
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes()); // compressed
        out.extend_from_slice(&size.to_le_bytes()); // uncompressed
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra length
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Its central-directory record.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        central.extend_from_slice(&20u16.to_le_bytes()); // version needed
        central.extend_from_slice(&0x0800u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0x0021u16.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&[0; 8]); // extra, comment, disk number, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let count = u16::try_from(files.len()).map_err(|_| ZipError::TooLarge("archive".into()))?;
    let dir_offset = small(out.len(), "archive")?;
    let dir_size = small(central.len(), "archive")?;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // this disk, disk with the directory
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&dir_size.to_le_bytes());
    out.extend_from_slice(&dir_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        // The CRC-32 catalogue's check value.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// Reads the archive back through its central directory, as an unzipper does.
    #[test]
    fn central_directory_finds_every_file() {
        let files = vec![
            ("a/one.json".to_string(), b"{\"x\": 1}\n".to_vec()),
            ("a/two.bin".to_string(), (0..=255u8).collect()),
        ];
        let zip = store(&files).unwrap();
        let u16_at = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as usize;
        let u32_at = |i: usize| u32::from_le_bytes(zip[i..i + 4].try_into().unwrap()) as usize;
        let end = zip.len() - 22;
        assert_eq!(u32_at(end), 0x0605_4b50);
        assert_eq!(u16_at(end + 10), 2);
        let mut at = u32_at(end + 16);
        for (name, data) in &files {
            assert_eq!(u32_at(at), 0x0201_4b50);
            assert_eq!(u32_at(at + 16), crc32(data) as usize);
            let name_len = u16_at(at + 28);
            assert_eq!(&zip[at + 46..at + 46 + name_len], name.as_bytes());
            let local = u32_at(at + 42);
            assert_eq!(u32_at(local), 0x0403_4b50);
            let start = local + 30 + u16_at(local + 26);
            assert_eq!(&zip[start..start + data.len()], &data[..]);
            at += 46 + name_len;
        }
        assert_eq!(at, end);
    }
}
