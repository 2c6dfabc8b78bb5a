//! Signatures of what this crate does not map itself: swap (header only)
//! and the filesystems and containers left to partclone or imaged whole.

use crate::io::{bytes, le32, text, uuid, Region};
use crate::FsmapError;

/// Something recognised by its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// Name as blkid gives it: `"xfs"`, `"btrfs"`, `"LUKS"`, ...
    pub(crate) name: String,
    pub(crate) label: Option<String>,
    pub(crate) uuid: Option<String>,
    pub(crate) block_size: u32,
    /// The `partclone.<x>` that can map it, if any.
    pub(crate) partclone: Option<&'static str>,
    /// Why it is imaged whole when partclone cannot map it.
    pub(crate) whole_because: Option<&'static str>,
}

/// A Linux swap header: page size, label and UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SwapHeader {
    pub(crate) page_size: u32,
    pub(crate) label: Option<String>,
    pub(crate) uuid: Option<String>,
    /// A hibernation image replaced the signature: the contents matter.
    pub(crate) hibernation: bool,
}

/// The swap signature sits in the last 10 bytes of the first page.
pub(crate) fn swap(region: &Region) -> Result<Option<SwapHeader>, FsmapError> {
    for page in [4096u32, 8192, 16384, 32768, 65536] {
        let Some(sig) = region.peek(u64::from(page) - 10, 10)? else {
            break;
        };
        let hibernation = matches!(
            &sig[..],
            b"S1SUSPEND\0" | b"S2SUSPEND\0" | b"ULSUSPEND\0" | b"LINHIB0001"
        );
        if &sig[..] == b"SWAPSPACE2" || &sig[..] == b"SWAP-SPACE" || hibernation {
            let h = region.peek(1024, 64)?.unwrap_or_default();
            return Ok(Some(SwapHeader {
                page_size: page,
                label: text(bytes(&h, 28, 16)),
                uuid: uuid(bytes(&h, 12, 16)),
                hibernation,
            }));
        }
    }
    Ok(None)
}

/// Identifies the other filesystems and containers by signature.
pub(crate) fn other(region: &Region) -> Result<Option<Found>, FsmapError> {
    let found = |name: &str, partclone, whole_because| Found {
        name: name.to_string(),
        label: None,
        uuid: None,
        block_size: 512,
        partclone,
        whole_because,
    };
    let at = |off: u64, n: u64| region.peek(off, n);
    if let Some(b) = at(0, 512)? {
        if &b[..4] == b"XFSB" {
            let bs = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            return Ok(Some(Found {
                label: text(bytes(&b, 108, 12)),
                uuid: uuid(bytes(&b, 32, 16)),
                block_size: if bs.is_power_of_two() { bs } else { 512 },
                ..found("xfs", Some("xfs"), None)
            }));
        }
        if &b[..6] == b"LUKS\xba\xbe" {
            return Ok(Some(Found {
                uuid: text(bytes(&b, 168, 40)),
                ..found("LUKS", None, Some("encrypted: every block may hold data"))
            }));
        }
        if &b[3..11] == b"EXFAT   " {
            return Ok(Some(found("exfat", Some("exfat"), None)));
        }
        if &b[3..11] == b"-FVE-FS-" {
            return Ok(Some(found(
                "BitLocker",
                None,
                Some("encrypted: every block may hold data"),
            )));
        }
        if &b[..4] == b"hsqs" {
            return Ok(Some(found(
                "squashfs",
                None,
                Some("read-only image, no free space"),
            )));
        }
        if &b[32..36] == b"NXSB" {
            return Ok(Some(found("apfs", Some("apfs"), None)));
        }
    }
    if let Some(b) = at(0x10000, 0x1000)? {
        if &b[0x40..0x48] == b"_BHRfS_M" {
            let bs = le32(&b, 0x90);
            return Ok(Some(Found {
                label: text(bytes(&b, 0x12B, 256)),
                uuid: uuid(bytes(&b, 0x20, 16)),
                block_size: if bs.is_power_of_two() { bs } else { 4096 },
                ..found("btrfs", Some("btrfs"), None)
            }));
        }
        if b[0x34..0x3A] == *b"ReIsEr" {
            return Ok(Some(found("reiserfs", None, Some("no map for reiserfs"))));
        }
    }
    for sector in 0..4u64 {
        if let Some(b) = at(sector * 512, 32)? {
            if &b[..8] == b"LABELONE" && &b[24..32] == b"LVM2 001" {
                return Ok(Some(found(
                    "LVM2",
                    None,
                    Some("an LVM physical volume: its logical volumes are not mapped"),
                )));
            }
        }
    }
    if let Some(b) = at(1024, 4)? {
        if le32(&b, 0) == 0xF2F5_2010 {
            return Ok(Some(found("f2fs", Some("f2fs"), None)));
        }
        if &b[..2] == b"H+" || &b[..2] == b"HX" {
            return Ok(Some(found("hfsplus", Some("hfsplus"), None)));
        }
    }
    for off in [0u64, 4096] {
        if at(off, 4)?.is_some_and(|b| le32(&b, 0) == 0xA92B_4EFC) {
            return Ok(Some(found(
                "linux_raid_member",
                None,
                Some("an md RAID member: the array is not mapped"),
            )));
        }
    }
    if at(32769, 5)?.as_deref() == Some(b"CD001") {
        return Ok(Some(found(
            "iso9660",
            None,
            Some("read-only image, no free space"),
        )));
    }
    if at(32768, 4)?.as_deref() == Some(b"JFS1") {
        return Ok(Some(found("jfs", None, Some("no map for jfs"))));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::io::Disk;

    fn probe(
        at: usize,
        magic: &[u8],
    ) -> Result<(Option<Found>, Option<SwapHeader>), Box<dyn std::error::Error>> {
        let mut img = vec![0u8; 256 << 10];
        img[at..at + magic.len()].copy_from_slice(magic);
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(&img)?;
        let d = Disk::open(f.path())?;
        let r = d.region();
        Ok((other(&r)?, swap(&r)?))
    }

    #[test]
    fn signatures() -> Result<(), Box<dyn std::error::Error>> {
        let name = |at, magic: &[u8]| -> Result<Option<String>, Box<dyn std::error::Error>> {
            Ok(probe(at, magic)?.0.map(|f| f.name))
        };
        assert_eq!(name(0, b"XFSB\0\0\x10\0")?.as_deref(), Some("xfs"));
        assert_eq!(name(0x10040, b"_BHRfS_M")?.as_deref(), Some("btrfs"));
        assert_eq!(
            name(512, b"LABELONE\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0LVM2 001")?.as_deref(),
            Some("LVM2")
        );
        assert_eq!(name(3, b"EXFAT   ")?.as_deref(), Some("exfat"));
        assert_eq!(
            name(1024, &0xF2F5_2010u32.to_le_bytes())?.as_deref(),
            Some("f2fs")
        );
        assert_eq!(
            name(4096, &0xA92B_4EFCu32.to_le_bytes())?.as_deref(),
            Some("linux_raid_member")
        );
        assert_eq!(name(32769, b"CD001")?.as_deref(), Some("iso9660"));
        let luks = probe(0, b"LUKS\xba\xbe")?.0.ok_or("no LUKS")?;
        assert_eq!((luks.partclone, luks.whole_because.is_some()), (None, true));
        let xfs = probe(0, b"XFSB\0\0\x10\0")?.0.ok_or("no xfs")?;
        assert_eq!((xfs.partclone, xfs.block_size), (Some("xfs"), 4096));
        assert_eq!(name(100, b"nothing")?, None);

        let (_, sw) = probe(4096 - 10, b"SWAPSPACE2")?;
        let sw = sw.ok_or("no swap")?;
        assert_eq!((sw.page_size, sw.hibernation), (4096, false));
        let (_, sw) = probe(65536 - 10, b"SWAPSPACE2")?;
        assert_eq!(sw.map(|s| s.page_size), Some(65536));
        let (_, sw) = probe(4096 - 10, b"S1SUSPEND\0")?;
        assert!(sw.is_some_and(|s| s.hibernation));
        Ok(())
    }
}
