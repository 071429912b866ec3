//! A host-side check that every eBPF program's deepest call chain fits
//! Linux 6.1's stack rule: the verifier adds the frames of the chain,
//! each rounded up to 32 bytes, against 512 bytes. The host's newer
//! kernel rounds more finely and accepts what 6.1 refuses, so without
//! this only the VM stage (the long pole of CI) finds an overflow.
//!
//! Frame sizes are read from the object's code the way the verifier sees
//! them: the deepest stack slot each function touches (loads and stores
//! below r10, and pointers made from r10). Calls are bpf-to-bpf calls and
//! callbacks passed as function pointers (bpf_find_vma). The VM stays the
//! authority; this check only makes an overflow fail in seconds.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind};

/// What Linux 6.1 allows a whole call chain.
const STACK_LIMIT: u64 = 512;
/// Linux 6.1 rounds every frame up to this (`round_up(depth, 32)`).
const FRAME_ROUNDING: u64 = 32;

/// (section index, byte offset): where a function starts.
type Place = (usize, u64);

struct Function {
    name: String,
    frame: u64,
    callees: Vec<Place>,
}

/// The deepest chain of every program in `object`, deepest first.
pub fn deepest_chains(object: &[u8]) -> Result<Vec<(u64, Vec<String>)>> {
    let file = object::File::parse(object).context("parsing the eBPF object")?;
    let mut starts: HashMap<Place, String> = HashMap::new();
    let mut ends: BTreeMap<Place, u64> = BTreeMap::new();
    for symbol in file.symbols() {
        let Some(section) = symbol.section_index() else {
            continue;
        };
        if symbol.kind() != object::SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        let place = (section.0, symbol.address());
        starts.insert(place, symbol.name().unwrap_or("?").to_string());
        ends.insert(place, symbol.address() + symbol.size());
    }
    let mut functions: HashMap<Place, Function> = HashMap::new();
    for section in file.sections() {
        if section.kind() != SectionKind::Text {
            continue;
        }
        let code = section.data()?;
        let relocations: HashMap<u64, RelocationTarget> = section
            .relocations()
            .map(|(offset, relocation)| (offset, relocation.target()))
            .collect();
        // The function a relocation's symbol names: a function symbol, or
        // a section symbol plus the instruction's immediate.
        let target_of = |offset: u64, addend: u64| -> Option<Place> {
            let RelocationTarget::Symbol(index) = relocations.get(&offset)? else {
                return None;
            };
            let symbol = file.symbol_by_index(*index).ok()?;
            let section = symbol.section_index()?;
            let address = if symbol.kind() == object::SymbolKind::Section {
                addend
            } else {
                symbol.address()
            };
            Some((section.0, address))
        };
        for (&(index, start), &end) in
            ends.range((section.index().0, 0)..(section.index().0 + 1, 0))
        {
            let mut function = Function {
                name: starts[&(index, start)].clone(),
                frame: 0,
                callees: Vec::new(),
            };
            // Registers holding r10 (the frame pointer) copied.
            let mut frame_pointers = [false; 11];
            let mut pc = start;
            while pc + 8 <= end && (pc as usize) + 8 <= code.len() {
                let insn = &code[pc as usize..pc as usize + 8];
                let (opcode, dst, src) = (insn[0], insn[1] & 0xf, insn[1] >> 4);
                let off = i16::from_le_bytes([insn[2], insn[3]]);
                let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                let below_frame = |reg: u8, off: i16| {
                    (reg == 10 && off < 0).then(|| u64::from(off.unsigned_abs()))
                };
                let touched = match opcode & 7 {
                    // LDX
                    1 => below_frame(src, off),
                    // ST, STX
                    2 | 3 => below_frame(dst, off),
                    _ => None,
                };
                if let Some(depth) = touched {
                    function.frame = function.frame.max(depth);
                }
                let dst_slot = usize::from(dst).min(10);
                match opcode {
                    // r_dst = r10
                    0xbf if src == 10 => frame_pointers[dst_slot] = true,
                    // r_dst += imm on a copy of r10: a stack address.
                    0x07 if frame_pointers[dst_slot] && imm < 0 => {
                        function.frame = function.frame.max(u64::from(imm.unsigned_abs()));
                    }
                    // A bpf-to-bpf call: through a relocation, else relative.
                    0x85 if src == 1 => {
                        let relative = (pc as i64 + (i64::from(imm) + 1) * 8) as u64;
                        let callee = target_of(pc, ((i64::from(imm) + 1) * 8) as u64)
                            .unwrap_or((index, relative));
                        function.callees.push(callee);
                    }
                    // ld_imm64 of a function (a callback).
                    0x18 => {
                        if let Some(callee) = target_of(pc, imm as u32 as u64) {
                            if starts.contains_key(&callee) {
                                function.callees.push(callee);
                            }
                        }
                    }
                    _ => {
                        if opcode & 7 == 7 || opcode & 7 == 4 {
                            frame_pointers[dst_slot] = false;
                        }
                    }
                }
                // Loads (LDX, ld_imm64) overwrite their register.
                if opcode & 7 == 1 || opcode == 0x18 {
                    frame_pointers[dst_slot] = false;
                }
                pc += if opcode == 0x18 { 16 } else { 8 };
            }
            functions.insert((index, start), function);
        }
    }
    let programs: Vec<Place> = functions
        .keys()
        .filter(|place| {
            file.section_by_index(object::SectionIndex(place.0))
                .ok()
                .and_then(|section| section.name().ok().map(|name| name != ".text"))
                .unwrap_or(false)
        })
        .copied()
        .collect();
    let mut chains: Vec<(u64, Vec<String>)> = programs
        .iter()
        .map(|program| deepest(&functions, *program, &mut Vec::new()))
        .collect();
    chains.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(chains)
}

/// The deepest chain from `place`: its rounded bytes and its frames.
fn deepest(
    functions: &HashMap<Place, Function>,
    place: Place,
    path: &mut Vec<Place>,
) -> (u64, Vec<String>) {
    let Some(function) = functions.get(&place) else {
        return (0, Vec::new());
    };
    path.push(place);
    let mut below = (0, Vec::new());
    for callee in &function.callees {
        if path.contains(callee) {
            continue;
        }
        let chain = deepest(functions, *callee, path);
        if chain.0 > below.0 {
            below = chain;
        }
    }
    path.pop();
    let frame = function.frame.max(1).div_ceil(FRAME_ROUNDING) * FRAME_ROUNDING;
    let mut names = vec![format!(
        "{} ({} B)",
        short_name(&function.name),
        function.frame
    )];
    names.extend(below.1);
    (frame + below.0, names)
}

/// `_RNvNtCs..._16mmapwatch_probes6record12record_write` -> `record_write`.
fn short_name(mangled: &str) -> &str {
    let Some(last_digit) = mangled.rfind(|c: char| c.is_ascii_digit()) else {
        return mangled;
    };
    if mangled.starts_with("_R") && last_digit + 1 < mangled.len() {
        &mangled[last_digit + 1..]
    } else {
        mangled
    }
}

/// The eBPF object the last release build of probe-user embedded.
pub fn probes_object() -> Result<std::path::PathBuf> {
    let build = crate::workspace_root().join("target/release/build");
    let newest = std::fs::read_dir(&build)
        .with_context(|| format!("reading {}", build.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("probe-user-")
        })
        .map(|entry| entry.path().join("out/mmapwatch-probes"))
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .max();
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no eBPF object under {}: build probe-user first",
            build.display()
        ),
    }
}

/// Fails when a program's deepest chain is over Linux 6.1's limit.
pub fn check(object_path: &Path) -> Result<()> {
    let object =
        std::fs::read(object_path).with_context(|| format!("reading {}", object_path.display()))?;
    let chains = deepest_chains(&object)?;
    let Some((bytes, frames)) = chains.first() else {
        bail!("no eBPF programs found in {}", object_path.display());
    };
    let summary = format!("{bytes} of {STACK_LIMIT} bytes: {}", frames.join(" -> "));
    if *bytes > STACK_LIMIT {
        bail!("an eBPF call chain is over Linux 6.1's stack limit (32-byte frames), {summary}");
    }
    println!("xtask: deepest eBPF call chain {summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, frame: u64, callees: &[Place]) -> Function {
        Function {
            name: name.into(),
            frame,
            callees: callees.to_vec(),
        }
    }

    #[test]
    fn frames_are_rounded_to_32_bytes_and_the_deepest_branch_counts() {
        // entry (40) -> a (104) -> b (168) -> c (104) -> d (0): the chain
        // Linux 6.1 refused, 64 + 128 + 192 + 128 + 32 = 544.
        let functions: HashMap<Place, Function> = [
            ((1, 0), function("entry", 40, &[(0, 0)])),
            ((0, 0), function("a", 104, &[(0, 100), (0, 200)])),
            ((0, 100), function("b", 168, &[(0, 300)])),
            ((0, 200), function("shallow", 8, &[])),
            ((0, 300), function("c", 104, &[(0, 400), (0, 0)])),
            ((0, 400), function("d", 0, &[])),
        ]
        .into_iter()
        .collect();
        let (bytes, frames) = deepest(&functions, (1, 0), &mut Vec::new());
        assert_eq!(bytes, 544);
        assert_eq!(
            frames,
            [
                "entry (40 B)",
                "a (104 B)",
                "b (168 B)",
                "c (104 B)",
                "d (0 B)"
            ]
        );
    }

    #[test]
    fn rust_symbols_are_shortened_to_their_last_name() {
        assert_eq!(
            short_name("_RNvNtCslDUkm9Y550G_16mmapwatch_probes6record12record_write"),
            "record_write"
        );
        assert_eq!(short_name("page_fault_user"), "page_fault_user");
    }
}
