//! ext2/3/4: the superblock, the group descriptors and the block bitmaps.
//!
//! No well-kept pure-Rust crate reads ext4 allocation bitmaps, so this is a
//! parser of the on-disk structures, following the kernel's `fs/ext4`
//! (`ext4_fill_super`, `ext4_check_descriptors`, `descriptor_loc`,
//! `ext4_num_base_meta_blocks`, `ext4_init_block_bitmap`) and checked in the
//! tests against `dumpe2fs`, `debugfs` and `partclone.ext4`.
//!
//! What is used, in filesystem blocks:
//! * the boot block and superblock (bytes 0..2048 of the partition);
//! * in every group: its superblock/descriptor/reserved-descriptor backups
//!   (sparse_super, sparse_super2 and meta_bg rules), its block and inode
//!   bitmaps and its inode table, wherever flex_bg put them;
//! * in every group with a bitmap on disk, every block the bitmap marks;
//!   a `BLOCK_UNINIT` group has no bitmap and holds nothing but the metadata
//!   above, as the kernel's `ext4_init_block_bitmap` says.
//!
//! A group whose bitmap fails its checksum, or whose bitmap disagrees with
//! the free count in its descriptor, is kept whole (one note): never drop a
//! used block. Anything else that does not hold together (bad magic, sizes
//! beyond the partition, a descriptor checksum that fails) makes the caller
//! image the partition whole.

use imgcast_disk::Extents;

use super::bits::{crc16, crc32c, for_each_run};
use super::Mapped;
use crate::io::{bytes, ensure, le16, le32, text, uuid, Fault, Region};
use crate::layout::{FsKind, MapMethod};

const SB_OFFSET: u64 = 1024;
const SB_SIZE: usize = 1024;
const MAGIC: u16 = 0xEF53;

const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// Every incompatible feature the kernel knows (6.x): compression 0x1 and
/// anything newer are refused, since they may change what a block means.
const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_JOURNAL_DEV
    | INCOMPAT_META_BG
    | 0x40 // extents
    | INCOMPAT_64BIT
    | 0x100 // mmp
    | INCOMPAT_FLEX_BG
    | 0x400 // ea_inode
    | 0x1000 // dirdata
    | INCOMPAT_CSUM_SEED
    | 0x4000 // largedir
    | 0x8000 // inline_data
    | 0x10000 // encrypt
    | 0x20000; // casefold

const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

const BG_BLOCK_UNINIT: u16 = 0x2;

/// Offset of `bg_checksum` in a group descriptor.
const DESC_CSUM_OFFSET: usize = 0x1E;
/// Descriptors at least this long hold the high half of the bitmap checksum.
const DESC_BB_CSUM_HI_END: u64 = 0x3C;

/// The superblock fields the map needs, checked for consistency.
#[derive(Debug, Clone)]
pub(crate) struct Super {
    pub(crate) kind: FsKind,
    pub(crate) block_size: u64,
    pub(crate) blocks_count: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inode_table_blocks: u64,
    pub(crate) groups: u64,
    desc_size: u64,
    descs_per_block: u64,
    gdb_count: u64,
    reserved_gdt: u64,
    first_meta_bg: u64,
    backup_bgs: [u64; 2],
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    state: u16,
    uuid: [u8; 16],
    csum_seed: u32,
    pub(crate) label: Option<String>,
}

impl Super {
    fn has(&self, ro_compat: u32) -> bool {
        self.ro_compat & ro_compat != 0
    }

    fn meta_bg(&self) -> bool {
        self.incompat & INCOMPAT_META_BG != 0
    }

    fn metadata_csum(&self) -> bool {
        self.has(RO_COMPAT_METADATA_CSUM)
    }

    /// Whether descriptors carry checksums, and so `BLOCK_UNINIT` is honoured.
    fn desc_csum(&self) -> bool {
        self.has(RO_COMPAT_METADATA_CSUM | RO_COMPAT_GDT_CSUM)
    }

    fn group_first_block(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }

    fn group_len(&self, g: u64) -> u64 {
        (self.blocks_count - self.group_first_block(g)).min(self.blocks_per_group)
    }

    /// `ext4_bg_has_super`: whether group `g` holds a superblock copy.
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_bgs.contains(&g);
        }
        if g <= 1 || !self.has(RO_COMPAT_SPARSE_SUPER) {
            return true;
        }
        if g % 2 == 0 {
            return false;
        }
        [3, 5, 7].iter().any(|&b| is_power_of(g, b))
    }

    /// `descriptor_loc`: the block holding descriptor block `nr`.
    fn desc_block(&self, nr: u64) -> u64 {
        if !self.meta_bg() || nr < self.first_meta_bg {
            return self.first_data_block + 1 + nr;
        }
        let bg = nr * self.descs_per_block;
        self.group_first_block(bg) + u64::from(self.has_super(bg))
    }

    /// `ext4_num_base_meta_blocks`: superblock, descriptor and reserved
    /// descriptor blocks at the start of group `g`.
    fn base_meta_blocks(&self, g: u64) -> u64 {
        let sb = u64::from(self.has_super(g));
        if !self.meta_bg() || g < self.first_meta_bg * self.descs_per_block {
            if sb == 0 {
                return 0;
            }
            let gdb = if self.meta_bg() {
                self.first_meta_bg
            } else {
                self.gdb_count
            };
            return 1 + gdb + self.reserved_gdt;
        }
        let first = g / self.descs_per_block * self.descs_per_block;
        let in_meta = g == first || g == first + 1 || g == first + self.descs_per_block - 1;
        sb + u64::from(in_meta)
    }
}

fn is_power_of(mut x: u64, b: u64) -> bool {
    while x > 1 && x % b == 0 {
        x /= b;
    }
    x == 1
}

/// The superblock of `region`, if it has the ext magic.
pub(crate) fn read_super(region: &Region) -> Result<Option<Vec<u8>>, crate::FsmapError> {
    let Some(sb) = region.peek(SB_OFFSET, SB_SIZE as u64)? else {
        return Ok(None);
    };
    Ok((le16(&sb, 0x38) == MAGIC).then_some(sb))
}

/// ext2, ext3 or ext4, as blkid tells them apart: ext4 has features ext3
/// lacks; ext3 has a journal.
pub(crate) fn kind_of(sb: &[u8]) -> FsKind {
    let compat = le32(sb, 0x5C);
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    let ext3_incompat = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG;
    let ext3_ro = RO_COMPAT_SPARSE_SUPER | 0x2 | 0x4;
    if incompat & !ext3_incompat != 0 || ro_compat & !ext3_ro != 0 {
        FsKind::Ext4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    }
}

/// Parses and checks the superblock `sb` of a filesystem in a region of
/// `part_len` bytes.
pub(crate) fn parse_super(sb: &[u8], part_len: u64) -> Result<Super, Fault> {
    ensure(sb.len() >= SB_SIZE && le16(sb, 0x38) == MAGIC, || {
        "no ext superblock magic".into()
    })?;
    let rev = le32(sb, 0x4C);
    let (compat, incompat, ro_compat) = if rev == 0 {
        (0, 0, 0)
    } else {
        (le32(sb, 0x5C), le32(sb, 0x60), le32(sb, 0x64))
    };
    // With metadata_csum nothing else is trusted before the checksum.
    if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        ensure(sb[0x175] == 1, || format!("checksum type {}", sb[0x175]))?;
        let want = le32(sb, 0x3FC);
        let got = crc32c(!0, &[&sb[..0x3FC]]);
        ensure(want == got, || {
            format!("superblock checksum 0x{want:08x}, computed 0x{got:08x}")
        })?;
    }
    ensure(incompat & !INCOMPAT_KNOWN == 0, || {
        format!(
            "unknown incompatible features 0x{:x}",
            incompat & !INCOMPAT_KNOWN
        )
    })?;
    ensure(incompat & INCOMPAT_JOURNAL_DEV == 0, || {
        "an external journal device, not a filesystem".into()
    })?;
    ensure(ro_compat & RO_COMPAT_BIGALLOC == 0, || {
        "bigalloc (cluster allocation) is not mapped".into()
    })?;
    let log = le32(sb, 0x18);
    ensure(log <= 6, || format!("block size 2^(10+{log})"))?;
    let block_size = 1024u64 << log;
    ensure(le32(sb, 0x1C) == log, || {
        format!("cluster size 2^(10+{}) without bigalloc", le32(sb, 0x1C))
    })?;
    let is64 = incompat & INCOMPAT_64BIT != 0;
    let mut blocks_count = u64::from(le32(sb, 0x04));
    if is64 {
        blocks_count |= u64::from(le32(sb, 0x150)) << 32;
    }
    let first_data_block = u64::from(le32(sb, 0x14));
    ensure(first_data_block == u64::from(block_size == 1024), || {
        format!("first data block {first_data_block} with {block_size}-byte blocks")
    })?;
    ensure(blocks_count > first_data_block, || {
        format!("{blocks_count} blocks")
    })?;
    ensure(
        blocks_count
            .checked_mul(block_size)
            .is_some_and(|b| b <= part_len),
        || {
            format!(
                "{blocks_count} blocks of {block_size} bytes do not fit the partition ({part_len} bytes)"
            )
        },
    )?;
    let bpg = u64::from(le32(sb, 0x20));
    ensure(bpg >= 8 && bpg <= 8 * block_size && bpg % 8 == 0, || {
        format!("{bpg} blocks per group")
    })?;
    ensure(u64::from(le32(sb, 0x24)) == bpg, || {
        format!(
            "{} clusters per group, {bpg} blocks per group",
            le32(sb, 0x24)
        )
    })?;
    let ipg = u64::from(le32(sb, 0x28));
    ensure(ipg >= 1 && ipg <= 8 * block_size, || {
        format!("{ipg} inodes per group")
    })?;
    let inode_size = if rev == 0 {
        128
    } else {
        u64::from(le16(sb, 0x58))
    };
    ensure(
        inode_size.is_power_of_two() && (128..=block_size).contains(&inode_size),
        || format!("inode size {inode_size}"),
    )?;
    let groups = (blocks_count - first_data_block).div_ceil(bpg);
    ensure(
        groups.checked_mul(ipg) == Some(u64::from(le32(sb, 0x00))),
        || {
            format!(
                "{} inodes, but {groups} groups of {ipg} inodes",
                le32(sb, 0x00)
            )
        },
    )?;
    let desc_size = if is64 { u64::from(le16(sb, 0xFE)) } else { 32 };
    ensure(
        !is64 || (desc_size.is_power_of_two() && (64..=1024).contains(&desc_size)),
        || format!("group descriptor size {desc_size}"),
    )?;
    let descs_per_block = block_size / desc_size;
    let gdb_count = groups.div_ceil(descs_per_block);
    let reserved_gdt = u64::from(le16(sb, 0xCE));
    ensure(reserved_gdt <= block_size / 4, || {
        format!("{reserved_gdt} reserved descriptor blocks")
    })?;
    let meta_bg = incompat & INCOMPAT_META_BG != 0;
    let first_meta_bg = u64::from(le32(sb, 0x104));
    if meta_bg {
        ensure(first_meta_bg <= gdb_count, || {
            format!("first meta_bg {first_meta_bg} past {gdb_count} descriptor blocks")
        })?;
    }
    let head = if meta_bg { first_meta_bg } else { gdb_count };
    ensure(1 + head + reserved_gdt <= bpg.min(blocks_count), || {
        format!("{head} descriptor and {reserved_gdt} reserved blocks overflow group 0")
    })?;
    let inode_table_blocks = (ipg * inode_size).div_ceil(block_size);
    ensure(inode_table_blocks < bpg, || {
        format!("an inode table of {inode_table_blocks} blocks in groups of {bpg}")
    })?;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(bytes(sb, 0x68, 16));
    let csum_seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
        le32(sb, 0x270)
    } else {
        crc32c(!0, &[&uuid])
    };
    Ok(Super {
        kind: kind_of(sb),
        block_size,
        blocks_count,
        first_data_block,
        blocks_per_group: bpg,
        inode_table_blocks,
        groups,
        desc_size,
        descs_per_block,
        gdb_count,
        reserved_gdt,
        first_meta_bg,
        backup_bgs: [u64::from(le32(sb, 0x24C)), u64::from(le32(sb, 0x250))],
        compat,
        incompat,
        ro_compat,
        state: le16(sb, 0x3A),
        uuid,
        csum_seed,
        label: text(bytes(sb, 0x78, 16)),
    })
}

/// Why the filesystem is not in a state to be imaged, if it is not.
pub(crate) fn dirty_reason(s: &Super) -> Option<String> {
    if s.incompat & INCOMPAT_RECOVER != 0 {
        Some("marked dirty: its journal needs recovery (needs_recovery)".into())
    } else if s.state & STATE_ERROR != 0 {
        Some("marked as having errors (s_state)".into())
    } else if s.state & STATE_VALID == 0 {
        Some("marked dirty: not cleanly unmounted (s_state)".into())
    } else {
        None
    }
}

/// One group descriptor, the fields the map needs.
#[derive(Debug, Clone, Copy)]
struct Desc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free_blocks: u64,
    flags: u16,
    bitmap_csum: u32,
}

fn parse_desc(s: &Super, g: u64, d: &[u8]) -> Result<Desc, Fault> {
    let wide = s.desc_size >= 64;
    let hi32 = |off| {
        if wide {
            u64::from(le32(d, off)) << 32
        } else {
            0
        }
    };
    let desc = Desc {
        block_bitmap: u64::from(le32(d, 0x00)) | hi32(0x20),
        inode_bitmap: u64::from(le32(d, 0x04)) | hi32(0x24),
        inode_table: u64::from(le32(d, 0x08)) | hi32(0x28),
        free_blocks: u64::from(le16(d, 0x0C))
            | if wide {
                u64::from(le16(d, 0x2C)) << 16
            } else {
                0
            },
        flags: le16(d, 0x12),
        bitmap_csum: u32::from(le16(d, 0x18))
            | if s.desc_size >= DESC_BB_CSUM_HI_END {
                u32::from(le16(d, 0x38)) << 16
            } else {
                0
            },
    };
    if s.desc_csum() {
        let want = le16(d, DESC_CSUM_OFFSET);
        let group = (g as u32).to_le_bytes();
        let rest = bytes(
            d,
            DESC_CSUM_OFFSET + 2,
            s.desc_size as usize - DESC_CSUM_OFFSET - 2,
        );
        let got = if s.metadata_csum() {
            (crc32c(
                s.csum_seed,
                &[&group, &d[..DESC_CSUM_OFFSET], &[0, 0], rest],
            ) & 0xFFFF) as u16
        } else {
            let tail: &[u8] = if s.incompat & INCOMPAT_64BIT != 0 {
                rest
            } else {
                &[]
            };
            crc16(!0, &[&s.uuid, &group, &d[..DESC_CSUM_OFFSET], tail])
        };
        ensure(want == got, || {
            format!("group {g} descriptor checksum 0x{want:04x}, computed 0x{got:04x}")
        })?;
    }
    // `ext4_check_descriptors`: without flex_bg a group's metadata lies in
    // the group; with it, anywhere in the filesystem but over group 0's head.
    let (lo, hi) = if s.incompat & INCOMPAT_FLEX_BG != 0 {
        (s.first_data_block, s.blocks_count)
    } else {
        let first = s.group_first_block(g);
        (first, first + s.group_len(g))
    };
    let head_end = s.first_data_block
        + 1
        + if s.meta_bg() {
            s.first_meta_bg
        } else {
            s.gdb_count
        };
    let check = |what: &str, b: u64, n: u64| {
        let ok = b >= lo
            && b.checked_add(n).is_some_and(|e| e <= hi)
            && (b >= head_end || b + n <= s.first_data_block);
        ensure(ok, || {
            format!("group {g}: {what} at block {b} (+{n}) outside blocks {lo}..{hi} or over the superblock")
        })
    };
    check("block bitmap", desc.block_bitmap, 1)?;
    check("inode bitmap", desc.inode_bitmap, 1)?;
    check("inode table", desc.inode_table, s.inode_table_blocks)?;
    Ok(desc)
}

/// Block ranges of the used map, collected unordered, then sorted once.
#[derive(Default)]
struct Blocks(Vec<(u64, u64)>);

impl Blocks {
    fn add(&mut self, start: u64, n: u64) {
        if n > 0 {
            self.0.push((start, n));
        }
    }
}

/// Maps the ext filesystem of `region` whose superblock is `sb`.
pub(crate) fn map(region: &Region, sb: &[u8]) -> Result<Mapped, Fault> {
    let s = parse_super(sb, region.len)?;
    let bs = s.block_size;

    // Descriptor blocks, where descriptor_loc puts them.
    let mut descs = Vec::with_capacity(s.groups as usize);
    for nr in 0..s.gdb_count {
        let b = s.desc_block(nr);
        ensure(b < s.blocks_count, || {
            format!("descriptor block {nr} at block {b}, past the end")
        })?;
        let buf = region.read_vec(b * bs, bs)?;
        for i in 0..s.descs_per_block {
            let g = nr * s.descs_per_block + i;
            if g >= s.groups {
                break;
            }
            let off = (i * s.desc_size) as usize;
            descs.push(parse_desc(&s, g, &buf[off..off + s.desc_size as usize])?);
        }
    }

    let mut blocks = Blocks::default();
    let mut notes = Vec::new();
    let (mut bad_csum, mut bad_count) = (Vec::new(), Vec::new());
    let mut bitmap = vec![0u8; bs as usize];
    for (g, d) in (0u64..).zip(&descs) {
        let first = s.group_first_block(g);
        let len = s.group_len(g);
        blocks.add(first, s.base_meta_blocks(g).min(len));
        blocks.add(d.block_bitmap, 1);
        blocks.add(d.inode_bitmap, 1);
        blocks.add(d.inode_table, s.inode_table_blocks);
        if s.desc_csum() && d.flags & BG_BLOCK_UNINIT != 0 {
            continue;
        }
        region.read_at(d.block_bitmap * bs, &mut bitmap)?;
        if s.metadata_csum() {
            let n = (s.blocks_per_group / 8) as usize;
            let mut got = crc32c(s.csum_seed, &[&bitmap[..n]]);
            if s.desc_size < DESC_BB_CSUM_HI_END {
                got &= 0xFFFF;
            }
            if got != d.bitmap_csum {
                bad_csum.push(g);
                blocks.add(first, len);
                continue;
            }
        }
        let ones = for_each_run(&bitmap, len, |i, n| blocks.add(first + i, n));
        if len - ones != d.free_blocks {
            bad_count.push(g);
            blocks.add(first, len);
        }
    }
    if !bad_csum.is_empty() {
        notes.push(format!(
            "{} group(s) kept whole: block bitmap checksum mismatch (groups {})",
            bad_csum.len(),
            list(&bad_csum)
        ));
    }
    if !bad_count.is_empty() {
        notes.push(format!(
            "{} group(s) kept whole: bitmap disagrees with the descriptor's free count (groups {})",
            bad_count.len(),
            list(&bad_count)
        ));
    }

    let mut v = blocks.0;
    v.sort_unstable();
    let mut used = Extents::new();
    used.insert(0, 2048.min(region.len)); // boot block and superblock
    for (b, n) in v {
        used.insert(b * bs, n * bs);
    }
    Ok(Mapped {
        kind: s.kind.clone(),
        label: s.label.clone(),
        uuid: uuid(&s.uuid),
        block_size: bs as u32,
        total_bytes: s.blocks_count * bs,
        used,
        method: MapMethod::Bitmap,
        dirty: dirty_reason(&s),
        notes,
    })
}

/// The first few numbers of a list, for a note.
fn list(v: &[u64]) -> String {
    let mut s: Vec<String> = v.iter().take(8).map(u64::to_string).collect();
    if v.len() > 8 {
        s.push("...".into());
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal consistent ext2 superblock: 1 KiB blocks, 8192 blocks in
    /// one group, 128 inodes.
    fn sb() -> Vec<u8> {
        let mut b = vec![0u8; SB_SIZE];
        let put32 =
            |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut b, 0x00, 128); // inodes
        put32(&mut b, 0x04, 8192); // blocks
        put32(&mut b, 0x14, 1); // first data block
        put32(&mut b, 0x20, 8192);
        put32(&mut b, 0x24, 8192);
        put32(&mut b, 0x28, 128);
        put32(&mut b, 0x4C, 1); // dynamic rev
        b[0x38..0x3A].copy_from_slice(&MAGIC.to_le_bytes());
        b[0x3A..0x3C].copy_from_slice(&STATE_VALID.to_le_bytes());
        b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        b[0x78..0x7D].copy_from_slice(b"small");
        b
    }

    fn bad(sb: &[u8], len: u64) -> String {
        match parse_super(sb, len) {
            Err(Fault::Bad(m)) => m,
            other => format!("not refused: {other:?}"),
        }
    }

    #[test]
    fn parses_a_consistent_superblock() -> Result<(), String> {
        let s = parse_super(&sb(), 8 << 20).map_err(|e| format!("{e:?}"))?;
        assert_eq!((s.block_size, s.blocks_count, s.groups), (1024, 8192, 1));
        assert_eq!(s.kind, FsKind::Ext2);
        assert_eq!(s.label.as_deref(), Some("small"));
        assert_eq!(s.inode_table_blocks, 32);
        assert_eq!(s.desc_block(0), 2);
        assert_eq!(s.base_meta_blocks(0), 2); // superblock + one descriptor block
        assert_eq!(dirty_reason(&s), None);
        Ok(())
    }

    #[test]
    fn refuses_lying_fields() {
        let set32 = |o: usize, v: u32| {
            let mut b = sb();
            b[o..o + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        assert!(bad(&set32(0x18, 30), 8 << 20).contains("block size"));
        assert!(bad(&set32(0x04, 9000), 8 << 20).contains("do not fit"));
        assert!(bad(&sb(), 4 << 20).contains("do not fit"));
        assert!(bad(&set32(0x14, 0), 8 << 20).contains("first data block"));
        assert!(bad(&set32(0x20, 0), 8 << 20).contains("blocks per group"));
        assert!(bad(&set32(0x28, 1 << 20), 8 << 20).contains("inodes per group"));
        assert!(bad(&set32(0x00, 7), 8 << 20).contains("inodes, but"));
        assert!(bad(&set32(0x60, 0x40000000), 8 << 20).contains("unknown incompatible"));
        assert!(bad(&set32(0x64, RO_COMPAT_BIGALLOC), 8 << 20).contains("bigalloc"));
        // 64bit with a descriptor size of 0 or a huge one.
        let mut b = set32(0x60, INCOMPAT_64BIT);
        assert!(bad(&b, 8 << 20).contains("descriptor size 0"));
        b[0xFE..0x100].copy_from_slice(&4096u16.to_le_bytes());
        assert!(bad(&b, 8 << 20).contains("descriptor size 4096"));
        // metadata_csum with a wrong checksum.
        let mut b = set32(0x64, RO_COMPAT_METADATA_CSUM);
        b[0x175] = 1;
        assert!(bad(&b, 8 << 20).contains("superblock checksum"));
        let c = crc32c(!0, &[&b[..0x3FC]]);
        b[0x3FC..].copy_from_slice(&c.to_le_bytes());
        assert!(parse_super(&b, 8 << 20).is_ok());
        let mut zero = sb();
        zero[0x38] = 0;
        assert!(bad(&zero, 8 << 20).contains("magic"));
    }

    #[test]
    fn dirty_states() -> Result<(), String> {
        let mut b = sb();
        b[0x3A] = 0;
        let s = parse_super(&b, 8 << 20).map_err(|e| format!("{e:?}"))?;
        assert!(dirty_reason(&s).is_some_and(|r| r.contains("not cleanly unmounted")));
        let mut b = sb();
        b[0x60] = INCOMPAT_RECOVER as u8;
        let s = parse_super(&b, 8 << 20).map_err(|e| format!("{e:?}"))?;
        assert!(dirty_reason(&s).is_some_and(|r| r.contains("needs_recovery")));
        Ok(())
    }

    #[test]
    fn backup_groups_follow_sparse_super_rules() -> Result<(), String> {
        let mut b = sb();
        b[0x64] = RO_COMPAT_SPARSE_SUPER as u8;
        let mut s = parse_super(&b, 8 << 20).map_err(|e| format!("{e:?}"))?;
        let with: Vec<u64> = (0..100).filter(|&g| s.has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
        s.compat = COMPAT_SPARSE_SUPER2;
        s.backup_bgs = [1, 77];
        let with: Vec<u64> = (0..100).filter(|&g| s.has_super(g)).collect();
        assert_eq!(with, [0, 1, 77]);
        s.compat = 0;
        s.ro_compat = 0;
        assert!((0..100).all(|g| s.has_super(g)));
        Ok(())
    }

    #[test]
    fn meta_bg_descriptor_locations() -> Result<(), String> {
        let s0 = parse_super(&sb(), 8 << 20).map_err(|e| format!("{e:?}"))?;
        // 4 KiB blocks, 64 descriptors of 64 bytes per block, meta_bg from
        // descriptor block 1: the blocks of meta-group m sit in groups
        // 64m, 64m+1 and 64m+63.
        let s = Super {
            block_size: 4096,
            blocks_count: 32768 * 200,
            first_data_block: 0,
            blocks_per_group: 32768,
            groups: 200,
            desc_size: 64,
            descs_per_block: 64,
            gdb_count: 4,
            reserved_gdt: 0,
            first_meta_bg: 1,
            incompat: INCOMPAT_META_BG | INCOMPAT_64BIT,
            ro_compat: RO_COMPAT_SPARSE_SUPER,
            ..s0
        };
        assert_eq!(s.desc_block(0), 1);
        assert_eq!(s.desc_block(1), 64 * 32768); // group 64 has no superblock
        assert_eq!(s.desc_block(2), 128 * 32768);
        assert_eq!(s.base_meta_blocks(0), 2); // superblock + first_meta_bg blocks
        assert_eq!(s.base_meta_blocks(1), 2); // backup superblock + 1 old-style block
        assert_eq!(s.base_meta_blocks(64), 1);
        assert_eq!(s.base_meta_blocks(65), 1);
        assert_eq!(s.base_meta_blocks(81), 1); // a superblock backup only
        assert_eq!(s.base_meta_blocks(127), 1);
        assert_eq!(s.base_meta_blocks(100), 0);
        Ok(())
    }
}
