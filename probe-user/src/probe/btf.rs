//! Reading vmlinux BTF: struct members (and their offsets), enumerators,
//! functions and raw tracepoint declarations. The offsets the programs
//! read are assembled from these in `offsets`.
//!
//! Rust eBPF programs have no CO-RE relocations, so the offsets the probes
//! need are resolved here, at run time, and passed in as a global. Members
//! inside anonymous structs and unions (6.18 hides `file.f_path` and
//! `dentry.d_name` in unions) are found by searching through them.
//!
//! Over 500 lines only with its unit tests, which build synthetic BTF (the
//! code is ~440).

use std::{cell::RefCell, collections::HashMap, path::Path};

use btf_rs::{Btf, Type};

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {0}: mmapwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    Missing(String),
    #[error("kernel BTF at {path} is unreadable or corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("kernel BTF at {path} is unreadable: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {0} is not a struct or union")]
    NotComposite(String),
    #[error("kernel BTF: member {0} is a bitfield")]
    Bitfield(String),
    #[error("kernel BTF has no enumerator {0}")]
    NoEnumerator(String),
    #[error("kernel BTF: {0}")]
    Lookup(String),
}

/// A raw tracepoint argument's type, as far as the programs care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgType {
    /// A pointer to the named struct or union ("" for any other pointee).
    Pointer(String),
    /// An integer (or enum) of this many bytes.
    Integer(usize),
    Bool,
    Other,
}

/// vmlinux BTF is a few MiB; a file past this is not BTF.
const MAX_BTF_BYTES: u64 = 256 << 20;

/// BTF that is not there, or that cannot be read (the I/O error kept).
fn unreadable(path: &Path, source: std::io::Error) -> BtfError {
    match source.kind() {
        std::io::ErrorKind::NotFound => BtfError::Missing(path.display().to_string()),
        _ => BtfError::Unreadable {
            path: path.display().to_string(),
            source,
        },
    }
}

/// The BTF file exists, is a regular file (not a device such as /dev/zero,
/// which would be read forever) and has a plausible size. Checked before
/// anything reads it, aya's parse included.
pub fn check_btf_file(path: &Path) -> Result<(), BtfError> {
    let corrupt = |reason: String| BtfError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|err| unreadable(path, err))?;
    if !metadata.is_file() {
        return Err(corrupt("not a regular file".into()));
    }
    if metadata.len() > MAX_BTF_BYTES {
        return Err(corrupt(format!(
            "{} bytes, more than any kernel's BTF",
            metadata.len()
        )));
    }
    Ok(())
}

/// Parsed vmlinux BTF with the lookups mmapwatch needs.
pub struct KernelBtf {
    btf: Btf,
    /// Types by name, as looked up so far.
    named: RefCell<HashMap<String, Vec<Type>>>,
}

impl KernelBtf {
    fn new(btf: Btf) -> Self {
        Self {
            btf,
            named: RefCell::default(),
        }
    }

    /// Maps BTF from `path` and parses types as they are looked up: a dozen
    /// lookups need not parse all of vmlinux's ~100,000 types (that took
    /// ~90 ms of start-up). The file is validated first like any input.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        check_btf_file(path)?;
        // Any other file (tests, simulated kernels) may be corrupt: the
        // full parser checks all of it, so corruption is an error up front.
        if path != Path::new(VMLINUX_BTF) {
            return Self::from_file_parsed(path);
        }
        let parsed =
            std::panic::catch_unwind(|| Btf::from_file_with_backend(path, btf_rs::Backend::Mmap));
        match parsed {
            Ok(Ok(btf)) => Ok(Self::new(btf)),
            // sysfs BTF can be mapped only since Linux 6.17 (ENODEV before):
            // read it instead.
            Ok(Err(err)) => {
                log::debug!("mapping {}: {err}; reading it whole", path.display());
                Self::from_file_parsed(path)
            }
            Err(_) => Err(BtfError::Corrupt {
                path: path.display().to_string(),
                reason: "malformed type data".into(),
            }),
        }
    }

    /// Reads and parses all of the BTF in `path`.
    pub fn from_file_parsed(path: &Path) -> Result<Self, BtfError> {
        check_btf_file(path)?;
        let bytes = std::fs::read(path).map_err(|err| unreadable(path, err))?;
        Self::from_bytes(&bytes).map_err(|err| match err {
            BtfError::Corrupt { reason, .. } => BtfError::Corrupt {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Parses raw BTF (the format of `/sys/kernel/btf/vmlinux`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        // btf-rs panics on a few malformed inputs; corrupt BTF must be an
        // error, never a crash, so a panic is caught and reported as such.
        let parsed = std::panic::catch_unwind(|| Btf::from_bytes(bytes));
        match parsed {
            Ok(Ok(btf)) => Ok(Self::new(btf)),
            Ok(Err(err)) => Err(BtfError::Corrupt {
                path: "<bytes>".into(),
                reason: err.to_string(),
            }),
            Err(_) => Err(BtfError::Corrupt {
                path: "<bytes>".into(),
                reason: "malformed type data".into(),
            }),
        }
    }

    /// Types named `name`. Each lookup by name scans all of vmlinux's
    /// ~100,000 types (~2 ms here), so results are kept, and the names
    /// start-up needs are found together in one scan ([`Self::prefetch`]).
    fn types_named(&self, name: &str) -> Vec<Type> {
        if let Some(types) = self.named.borrow().get(name) {
            return types.clone();
        }
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        self.named
            .borrow_mut()
            .insert(name.to_string(), types.clone());
        types
    }

    /// Looks all of `names` up in one scan of the types.
    pub(super) fn prefetch(&self, names: &[&str]) {
        let alternatives: Vec<String> = names.iter().map(|name| regex::escape(name)).collect();
        let Ok(pattern) = regex::Regex::new(&format!("^(?:{})$", alternatives.join("|"))) else {
            return;
        };
        let Ok(ids) = self.btf.resolve_ids_by_regex(&pattern) else {
            return;
        };
        let mut found: HashMap<String, Vec<Type>> = names
            .iter()
            .map(|name| (name.to_string(), Vec::new()))
            .collect();
        for id in ids {
            let Ok(ty) = self.btf.resolve_type_by_id(id) else {
                continue;
            };
            let Some(name) = ty.as_btf_type().and_then(|t| self.btf.resolve_name(t).ok()) else {
                continue;
            };
            if let Some(types) = found.get_mut(&name) {
                types.push(ty);
            }
        }
        self.named.borrow_mut().extend(found);
    }

    pub(super) fn composite(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        // Forward declarations share the name; take the definition.
        self.types_named(name)
            .into_iter()
            .find_map(|ty| match ty {
                Type::Struct(s) | Type::Union(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(name.into()))
    }

    /// Strips typedefs and qualifiers to reach a struct or union.
    pub(super) fn resolve_composite(
        &self,
        ty: Type,
        what: &str,
    ) -> Result<btf_rs::Struct, BtfError> {
        let mut ty = ty;
        for _ in 0..16 {
            ty = match ty {
                Type::Struct(s) | Type::Union(s) => return Ok(s),
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let next = ty
                        .as_btf_type()
                        .ok_or_else(|| BtfError::NotComposite(what.into()))?;
                    self.btf
                        .resolve_chained_type(next)
                        .map_err(|err| BtfError::Lookup(err.to_string()))?
                }
                _ => return Err(BtfError::NotComposite(what.into())),
            };
        }
        Err(BtfError::NotComposite(what.into()))
    }

    /// Byte offset of `member` in `strukt`, searching anonymous members.
    /// Returns the offset and the member's type.
    pub(super) fn member(
        &self,
        strukt: &btf_rs::Struct,
        strukt_name: &str,
        member: &str,
        depth: usize,
    ) -> Result<Option<(u32, Type)>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        for candidate in &strukt.members {
            let name = self.btf.resolve_name(candidate).unwrap_or_default();
            if name == member {
                if candidate.bitfield_size().is_some_and(|bits| bits != 0) {
                    return Err(BtfError::Bitfield(format!("{strukt_name}.{member}")));
                }
                let ty = self
                    .btf
                    .resolve_chained_type(candidate)
                    .map_err(|err| BtfError::Lookup(err.to_string()))?;
                return Ok(Some((candidate.bit_offset() / 8, ty)));
            }
            if name.is_empty() {
                let ty = self
                    .btf
                    .resolve_chained_type(candidate)
                    .map_err(|err| BtfError::Lookup(err.to_string()))?;
                if let Ok(inner) = self.resolve_composite(ty, strukt_name) {
                    if let Some((offset, ty)) =
                        self.member(&inner, strukt_name, member, depth + 1)?
                    {
                        return Ok(Some((candidate.bit_offset() / 8 + offset, ty)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of a dotted member path such as `f_path.dentry` in
    /// `struct file`. Every step but the last must be an embedded struct.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut current = self.composite(strukt)?;
        let mut total = 0u32;
        let mut steps = path.split('.').peekable();
        while let Some(step) = steps.next() {
            let (offset, ty) =
                self.member(&current, strukt, step, 0)?
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.into(),
                        member: path.into(),
                    })?;
            total = total
                .checked_add(offset)
                .ok_or_else(|| BtfError::Lookup(format!("offset of {strukt}.{path} overflows")))?;
            if steps.peek().is_some() {
                current = self.resolve_composite(ty, &format!("{strukt}.{step}"))?;
            }
        }
        Ok(total)
    }

    /// Elements of the array member `member` of `strukt` (e.g. `pivot[15]`).
    pub fn array_len(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let composite = self.composite(strukt)?;
        let (_, ty) =
            self.member(&composite, strukt, member, 0)?
                .ok_or_else(|| BtfError::NoMember {
                    strukt: strukt.into(),
                    member: member.into(),
                })?;
        match ty {
            Type::Array(array) => u32::try_from(array.len())
                .map_err(|_| BtfError::Lookup(format!("{strukt}.{member} is too long"))),
            _ => Err(BtfError::Lookup(format!(
                "{strukt}.{member} is not an array"
            ))),
        }
    }

    /// Value of enumerator `name` of `enum enum_name`, such as `PG_head`
    /// of `pageflags`.
    pub fn enumerator(&self, enum_name: &str, name: &str) -> Result<u64, BtfError> {
        let missing = || BtfError::NoEnumerator(format!("{enum_name}::{name}"));
        for ty in self.types_named(enum_name) {
            match ty {
                Type::Enum(e) => {
                    if let Some(m) = e
                        .members
                        .iter()
                        .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name))
                    {
                        return Ok(u64::from(m.val()));
                    }
                }
                Type::Enum64(e) => {
                    if let Some(m) = e
                        .members
                        .iter()
                        .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name))
                    {
                        return Ok(m.val());
                    }
                }
                _ => {}
            }
        }
        Err(missing())
    }

    /// Finds the declarations of these raw tracepoints in one scan (each
    /// lookup by name is a scan of all types otherwise).
    pub fn prefetch_tracepoints<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let typedefs: Vec<String> = names.map(|name| format!("btf_trace_{name}")).collect();
        let typedefs: Vec<&str> = typedefs.iter().map(String::as_str).collect();
        self.prefetch(&typedefs);
    }

    /// A raw tracepoint's arguments as this kernel declares them (the
    /// `btf_trace_NAME` typedef, without its leading `void *`); None when
    /// its BTF has no such tracepoint (a module's, or another kernel's).
    pub fn tracepoint_args(&self, name: &str) -> Result<Option<Vec<ArgType>>, BtfError> {
        let typedef = format!("btf_trace_{name}");
        let Some(ty) = self
            .types_named(&typedef)
            .into_iter()
            .find(|ty| matches!(ty, Type::Typedef(_)))
        else {
            return Ok(None);
        };
        let lookup = |err: btf_rs::Error| BtfError::Lookup(format!("{typedef}: {err}"));
        let mut ty = ty;
        for _ in 0..4 {
            ty = match ty {
                Type::FuncProto(proto) => {
                    let args = proto
                        .parameters
                        .iter()
                        .skip(1)
                        .map(|param| {
                            let ty = self.btf.resolve_chained_type(param).map_err(lookup)?;
                            Ok(self.arg_type(ty))
                        })
                        .collect::<Result<_, BtfError>>()?;
                    return Ok(Some(args));
                }
                Type::Typedef(_) | Type::Ptr(_) => {
                    let next = ty.as_btf_type().ok_or_else(|| {
                        BtfError::Lookup(format!("{typedef} is not a function pointer"))
                    })?;
                    self.btf.resolve_chained_type(next).map_err(lookup)?
                }
                _ => break,
            };
        }
        Err(BtfError::Lookup(format!(
            "{typedef} is not a function pointer"
        )))
    }

    /// An argument's type, typedefs and qualifiers stripped.
    fn arg_type(&self, ty: Type) -> ArgType {
        let mut ty = ty;
        for _ in 0..16 {
            ty = match ty {
                Type::Int(int) if int.is_bool() => return ArgType::Bool,
                Type::Int(int) => return ArgType::Integer(int.size()),
                Type::Enum(e) => return ArgType::Integer(e.size()),
                Type::Ptr(ptr) => {
                    let pointee = self
                        .btf
                        .resolve_chained_type(&ptr)
                        .ok()
                        .and_then(|ty| self.resolve_composite(ty, "pointee").ok())
                        .and_then(|s| self.btf.resolve_name(&s).ok())
                        .unwrap_or_default();
                    return ArgType::Pointer(pointee);
                }
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => match ty
                    .as_btf_type()
                    .and_then(|next| self.btf.resolve_chained_type(next).ok())
                {
                    Some(next) => next,
                    None => return ArgType::Other,
                },
                _ => return ArgType::Other,
            };
        }
        ArgType::Other
    }

    /// Whether a function of this name exists (for fentry/kprobe targets).
    pub fn has_function(&self, name: &str) -> bool {
        self.types_named(name)
            .iter()
            .any(|ty| matches!(ty, Type::Func(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds raw BTF from a list of (kind, info-extra) entries. Kept small:
    /// enough for structs, unions, ints, pointers and enums.
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_ENUM: u32 = 6;

    impl BtfBuilder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            offset
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let name_off = self.string(name);
            self.types.extend_from_slice(&name_off.to_le_bytes());
            self.types
                .extend_from_slice(&((kind << 24) | vlen).to_le_bytes());
            self.types.extend_from_slice(&size_or_type.to_le_bytes());
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
            id
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.header("", KIND_PTR, 0, to)
        }

        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.header(name, kind, members.len() as u32, size);
            for (member, ty, byte_offset) in members {
                let name_off = self.string(member);
                self.types.extend_from_slice(&name_off.to_le_bytes());
                self.types.extend_from_slice(&ty.to_le_bytes());
                self.types
                    .extend_from_slice(&(byte_offset * 8).to_le_bytes());
            }
            id
        }

        fn enumeration(&mut self, name: &str, values: &[(&str, u32)]) -> u32 {
            let id = self.header(name, KIND_ENUM, values.len() as u32, 4);
            for (value_name, value) in values {
                let name_off = self.string(value_name);
                self.types.extend_from_slice(&name_off.to_le_bytes());
                self.types.extend_from_slice(&value.to_le_bytes());
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            out.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
            out.extend_from_slice(&0u32.to_le_bytes()); // type_off
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes()); // str_off
            out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A miniature `struct file` whose `f_path` hides in an anonymous union,
    /// like 6.18's.
    fn sample() -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let long = b.int("long unsigned int", 8);
        let dentry = b.composite(KIND_STRUCT, "dentry", 8, &[("d_iname", long, 0)]);
        let dentry_ptr = b.ptr(dentry);
        let path = b.composite(
            KIND_STRUCT,
            "path",
            16,
            &[("mnt", long, 0), ("dentry", dentry_ptr, 8)],
        );
        let union = b.composite(
            KIND_UNION,
            "",
            16,
            &[("f_path", path, 0), ("__f_path", path, 0)],
        );
        b.composite(
            KIND_STRUCT,
            "file",
            64,
            &[("f_mode", long, 0), ("f_inode", long, 8), ("", union, 32)],
        );
        b.enumeration("pageflags", &[("PG_locked", 0), ("PG_head", 6)]);
        b.build()
    }

    #[test]
    fn resolves_plain_and_nested_members() {
        let btf = KernelBtf::from_bytes(&sample()).expect("parse");
        assert_eq!(btf.offset_of("file", "f_inode").unwrap(), 8);
        // Through the anonymous union at 32, then path.dentry at 8.
        assert_eq!(btf.offset_of("file", "f_path.dentry").unwrap(), 40);
        assert_eq!(btf.offset_of("file", "f_path").unwrap(), 32);
    }

    #[test]
    fn reports_missing_members_and_structs() {
        let btf = KernelBtf::from_bytes(&sample()).expect("parse");
        assert!(matches!(
            btf.offset_of("file", "f_pos"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.offset_of("inode", "i_ino"),
            Err(BtfError::NoStruct(_))
        ));
        // f_inode is a scalar: it cannot be descended into.
        assert!(matches!(
            btf.offset_of("file", "f_inode.x"),
            Err(BtfError::NotComposite(_))
        ));
    }

    #[test]
    fn reads_enumerators() {
        let btf = KernelBtf::from_bytes(&sample()).expect("parse");
        assert_eq!(btf.enumerator("pageflags", "PG_head").unwrap(), 6);
        assert!(btf.enumerator("pageflags", "PG_nonexistent").is_err());
        assert!(btf.enumerator("zoneflags", "PG_head").is_err());
    }

    #[test]
    fn corrupt_or_truncated_btf_is_an_error_not_a_panic() {
        let good = sample();
        for cut in [0, 3, 10, 24, 40, good.len() - 1] {
            assert!(KernelBtf::from_bytes(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        assert!(KernelBtf::from_bytes(&bad_magic).is_err());
    }

    #[test]
    fn missing_file_is_reported_as_missing() {
        let err = KernelBtf::from_file(Path::new("/nonexistent/vmlinux"))
            .err()
            .unwrap();
        assert!(matches!(err, BtfError::Missing(_)));
    }

    #[test]
    fn resolves_every_offset_on_the_running_kernel() {
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF)).expect("kernel BTF");
        let mut offsets = btf.kernel_offsets().expect("offsets");
        assert_ne!(offsets.vma_vm_file, 0);
        btf.vma_walk_offsets(&mut offsets)
            .expect("6.18 has a maple tree");
        assert_eq!(offsets.vma_walk, probe_common::vma_walk_kind::MAPLE);
        assert_eq!(
            (offsets.range64_pivot_count, offsets.arange64_pivot_count),
            (15, 9)
        );
        // 6.13+: a seqcount, whose sequence lies past the maple tree.
        assert_eq!(
            offsets.mm_lock_seq_kind,
            probe_common::mm_lock_seq_kind::SEQCOUNT
        );
        assert!(offsets.mm_lock_seq > offsets.mm_ma_root);
        // 6.10+: AS_FOLIO_ORDER_MAX (bit 21), 5 bits wide.
        assert_eq!(offsets.large_folio_mask, 0b11111 << 21);
        assert_ne!(offsets.file_dentry, 0);
        assert!(offsets.pg_head_bit < 64);
        assert!(offsets.pg_dirty_bit < 64 && offsets.pg_dirty_bit != offsets.pg_head_bit);
    }
}
