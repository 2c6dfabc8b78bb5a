//! Names of partition types, as fdisk and sgdisk print them.

/// A GPT type GUID (upper case) and its name.
const GPT_TYPES: &[(&str, &str)] = &[
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
    ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
    (
        "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        "Linux extended boot",
    ),
    (
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "Linux root (x86-64)",
    ),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"),
    (
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        "Linux root (ARM-64)",
    ),
    (
        "8484680C-9521-48C6-9C11-B0720656F69E",
        "Linux /usr (x86-64)",
    ),
    ("4D21B016-B534-45C2-A9FB-5C16E091FD2D", "Linux /var"),
    ("7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", "Linux /var/tmp"),
    ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux /srv"),
    (
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "Microsoft basic data",
    ),
    ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
    (
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC",
        "Windows recovery environment",
    ),
    (
        "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3",
        "Windows LDM metadata",
    ),
    ("AF9B60A0-1431-4F62-BC68-3311714A69AD", "Windows LDM data"),
    ("48465300-0000-11AA-AA11-00306543ECAC", "Apple HFS/HFS+"),
    ("7C3457EF-0000-11AA-AA11-00306543ECAC", "Apple APFS"),
    ("516E7CB4-6ECF-11D6-8FF8-00022D09712B", "FreeBSD UFS"),
    ("516E7CB5-6ECF-11D6-8FF8-00022D09712B", "FreeBSD swap"),
    (
        "6A898CC3-1DD2-11B2-99A6-080020736631",
        "Solaris /usr & Apple ZFS",
    ),
];

/// The name of a GPT partition type, or `"unknown type"`.
pub(crate) fn gpt_type_name(guid: &str) -> String {
    GPT_TYPES
        .iter()
        .find(|(g, _)| g.eq_ignore_ascii_case(guid))
        .map_or("unknown type", |(_, n)| n)
        .to_string()
}

/// The name of an MBR partition type byte.
pub(crate) fn mbr_type_name(sys: u8) -> String {
    match sys {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "Extended",
        0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0b => "W95 FAT32",
        0x0c => "W95 FAT32 (LBA)",
        0x0e => "W95 FAT16 (LBA)",
        0x0f => "W95 Ext'd (LBA)",
        0x11 => "Hidden FAT12",
        0x14 => "Hidden FAT16 <32M",
        0x16 => "Hidden FAT16",
        0x17 => "Hidden HPFS/NTFS",
        0x1b => "Hidden W95 FAT32",
        0x1c => "Hidden W95 FAT32 (LBA)",
        0x1e => "Hidden W95 FAT16 (LBA)",
        0x27 => "Hidden NTFS WinRE",
        0x42 => "SFS / Windows dynamic",
        0x82 => "Linux swap / Solaris",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xa6 => "OpenBSD",
        0xa9 => "NetBSD",
        0xaf => "HFS / HFS+",
        0xda => "Non-FS data",
        0xee => "GPT (protective)",
        0xef => "EFI (FAT-12/16/32)",
        0xfd => "Linux raid autodetect",
        _ => "unknown type",
    }
    .to_string()
}

/// A GUID stored in the mixed-endian EFI layout, upper case as sgdisk and
/// blkid print it.
pub(crate) fn guid_string(b: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_mixed_endian() {
        // The on-disk bytes of the Linux filesystem type GUID.
        let b = [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ];
        let g = guid_string(&b);
        assert_eq!(g, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        assert_eq!(gpt_type_name(&g), "Linux filesystem");
        assert_eq!(gpt_type_name(&g.to_lowercase()), "Linux filesystem");
        assert_eq!(
            gpt_type_name("00000000-0000-0000-0000-000000000001"),
            "unknown type"
        );
        assert_eq!(mbr_type_name(0x83), "Linux");
        assert_eq!(mbr_type_name(0x99), "unknown type");
    }
}
