//! What the programs assume of the kernel's interfaces, checked before they
//! load: the page size, where syscall tracepoint records hold their
//! arguments, and the order and types of raw tracepoint arguments. A kernel
//! that differs is refused with one line naming the difference, rather than
//! traced with fields read from the wrong place.

use std::path::Path;

use probe_common::{syscall_arg_at, PAGE_SIZE};

use super::{
    btf::{ArgType, KernelBtf},
    catalog::{Reads, RAW_TRACEPOINTS, TRACEPOINTS},
    env::page_size,
    error::LoadError,
};

/// Every check, for the tracepoints this kernel has.
pub(crate) fn check(btf: &KernelBtf, tracefs: &Path) -> Result<(), LoadError> {
    check_page_size(page_size())?;
    for tp in TRACEPOINTS.iter().filter(|tp| tp.category == "syscalls") {
        let format = tracefs
            .join("events")
            .join(tp.category)
            .join(tp.name)
            .join("format");
        // Absent: the tracepoint is missing, said where it is attached.
        if let Ok(text) = std::fs::read_to_string(&format) {
            check_syscall_record(tp.name, &text)?;
        }
    }
    let raw = TRACEPOINTS
        .iter()
        .filter(|tp| tp.raw)
        .map(|tp| (tp.name, None, tp.reads));
    let raw = raw.chain(
        RAW_TRACEPOINTS
            .iter()
            .map(|tp| (tp.name, tp.before_folios, tp.reads)),
    );
    let raw: Vec<_> = raw.collect();
    btf.prefetch_tracepoints(
        raw.iter()
            .flat_map(|(name, old, _)| std::iter::once(*name).chain(*old)),
    );
    for (name, before_folios, reads) in raw {
        let declared = match btf.tracepoint_args(name)? {
            Some(args) => Some((name, args)),
            None => match before_folios {
                Some(old) => btf.tracepoint_args(old)?.map(|args| (old, args)),
                None => None,
            },
        };
        // Not in vmlinux's BTF (a module's tracepoint): attached as
        // optional, or refused at attach.
        if let Some((name, args)) = declared {
            check_raw_args(name, &args, reads, before_folios.is_some())?;
        }
    }
    Ok(())
}

fn refuse(what: String) -> LoadError {
    LoadError::Platform(what)
}

fn check_page_size(size: u64) -> Result<(), LoadError> {
    if size == PAGE_SIZE {
        return Ok(());
    }
    Err(refuse(format!(
        "this kernel uses {} KiB pages; mmapwatch counts in 4 KiB pages (a 2 MiB PMD of 512) and supports no other size yet",
        size / 1024
    )))
}

/// A `syscalls:` record's fields after `__syscall_nr`: each 8 bytes, the
/// `n`th at [`syscall_arg_at`]`(n)` (an exit's `ret` at n = 0).
fn check_syscall_record(name: &str, format: &str) -> Result<(), LoadError> {
    let fields = format.lines().filter_map(parse_field);
    let arguments = fields
        .skip_while(|field| field.name != "__syscall_nr")
        .skip(1);
    for (n, field) in arguments.enumerate() {
        let expected = syscall_arg_at(n);
        if field.offset != expected || field.size != 8 {
            return Err(refuse(format!(
                "tracepoint syscalls:{name}: field {} is at offset {} ({} bytes); mmapwatch reads it at {expected} (8 bytes)",
                field.name, field.offset, field.size
            )));
        }
    }
    Ok(())
}

struct Field<'a> {
    name: &'a str,
    offset: usize,
    size: usize,
}

/// `\tfield:unsigned long start;\toffset:16;\tsize:8;\tsigned:0;`
fn parse_field(line: &str) -> Option<Field<'_>> {
    let mut parts = line.trim().split(';').map(str::trim);
    let declaration = parts.next()?.strip_prefix("field:")?;
    // The name is the declaration's last word, without an array suffix.
    let name = declaration.rsplit(' ').next()?;
    let name = name.split('[').next()?;
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(value) = part.strip_prefix("offset:") {
            offset = value.parse().ok();
        } else if let Some(value) = part.strip_prefix("size:") {
            size = value.parse().ok();
        }
    }
    Some(Field {
        name,
        offset: offset?,
        size: size?,
    })
}

/// The arguments a program reads against the kernel's declaration.
/// `paged`: the tracepoint passed a `struct page` before folios (5.16).
fn check_raw_args(
    name: &str,
    declared: &[ArgType],
    reads: &[(usize, Reads)],
    paged: bool,
) -> Result<(), LoadError> {
    for &(position, read) in reads {
        let found = declared.get(position);
        let fits = match (read, found) {
            (Reads::Pointer(want), Some(ArgType::Pointer(have))) => {
                have == want || (paged && want == "folio" && have == "page")
            }
            (Reads::Integer(bytes), Some(ArgType::Integer(have))) => *have == bytes,
            _ => false,
        };
        if !fits {
            let found = found.map_or("nothing".to_string(), |arg| format!("{arg:?}"));
            return Err(refuse(format!(
                "raw tracepoint {name}: argument {position} is {found}; mmapwatch reads it as {read:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MPROTECT: &str = "name: sys_enter_mprotect
ID: 601
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned long start;\toffset:16;\tsize:8;\tsigned:0;
\tfield:size_t len;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long prot;\toffset:32;\tsize:8;\tsigned:0;

print fmt: \"start: 0x%08lx, len: 0x%08lx, prot: 0x%08lx\"
";

    #[test]
    fn a_syscall_record_is_read_where_its_format_says() {
        check_syscall_record("sys_enter_mprotect", MPROTECT).unwrap();
        // A kernel that packed its arguments differently is refused.
        let moved = MPROTECT.replace("offset:32;\tsize:8", "offset:28;\tsize:4");
        let err = check_syscall_record("sys_enter_mprotect", &moved)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("field prot is at offset 28 (4 bytes)"),
            "{err}"
        );
        assert!(err.contains("reads it at 32"), "{err}");
    }

    #[test]
    fn raw_arguments_are_checked_by_position_and_type() {
        let fault = [
            ArgType::Integer(8),
            ArgType::Pointer("pt_regs".into()),
            ArgType::Integer(8),
        ];
        let reads = [(0, Reads::Integer(8)), (2, Reads::Integer(8))];
        check_raw_args("page_fault_user", &fault, &reads, false).unwrap();
        // Reordered (regs first), or an argument gone: refused.
        let reordered = [fault[1].clone(), fault[0].clone(), fault[2].clone()];
        assert!(check_raw_args("page_fault_user", &reordered, &reads, false).is_err());
        assert!(check_raw_args("page_fault_user", &fault[..2], &reads, false).is_err());
        // Before folios, the folio is a page.
        let dirtied = [
            ArgType::Pointer("page".into()),
            ArgType::Pointer("address_space".into()),
        ];
        let folio = [(0, Reads::Pointer("folio"))];
        check_raw_args("writeback_dirty_page", &dirtied, &folio, true).unwrap();
        assert!(check_raw_args("writeback_dirty_folio", &dirtied, &folio, false).is_err());
    }

    #[test]
    fn pages_other_than_4_kib_are_refused() {
        check_page_size(4096).unwrap();
        let err = check_page_size(16384).unwrap_err().to_string();
        assert!(err.contains("16 KiB pages"), "{err}");
    }

    /// This kernel's own interfaces pass (when its BTF and tracefs are
    /// readable here).
    #[test]
    fn the_running_kernel_passes() {
        let (Ok(btf), Ok(tracefs)) = (
            KernelBtf::from_file(Path::new("/sys/kernel/btf/vmlinux")),
            crate::probe::env::tracefs(),
        ) else {
            return;
        };
        check(&btf, &tracefs).unwrap();
        // And the check saw the declarations (not an empty lookup).
        let task = ArgType::Pointer("task_struct".into());
        assert_eq!(
            btf.tracepoint_args("sched_process_fork").unwrap(),
            Some(vec![task.clone(), task])
        );
    }
}
