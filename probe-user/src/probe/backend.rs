//! Choosing and attaching a backend (fentry, kprobe or tracepoint), and
//! detaching it.
//!
//! Over 500 lines only with its unit tests (the code is ~490).

use probe_common::{map_name, mw_name};
use std::{
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    maps::Array,
    programs::{BtfTracePoint, FEntry, KProbe, RawTracePoint, TracePoint},
};

use super::{
    catalog::{
        Hook, Tracepoint, DO_PAGE_MKWRITE, FENTRY_FS_MKWRITE_SLOTS, FINISH_FAULT,
        FOLIO_END_WRITEBACK, FS_MKWRITE_HOOKS, RAW_TRACEPOINTS, READ_FAULTS, TRACEPOINTS, WP_PAGE,
        WP_PAGE_COPY,
    },
    env::{kprobe_pmu, tracepoint_exists},
    error::{short_error, LoadError},
    kallsyms::Kallsyms,
    load::{program_mut, Probes},
};

/// The backend asked for (`--backend`; clap's derive names the values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The best backend this kernel loads: fentry, else kprobe, else tracepoint.
    #[default]
    Auto,
    /// BTF trampolines on do_wp_page, finish_fault, wp_page_copy,
    /// do_page_mkwrite and folio_end_writeback.
    Fentry,
    /// kprobes on the same functions (kernels without BTF trampolines).
    Kprobe,
    /// exceptions:page_fault_* (x86 only) with a lock-free VMA walk, writeback tracepoints.
    Tracepoint,
}

/// What trying the function-hook backends gave: the one attached, if any,
/// and why the backend in use was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub mechanism: Option<Mechanism>,
    pub reason: String,
}

/// The function-hook mechanisms `choice` tries, in order of preference.
pub fn candidates(choice: BackendChoice) -> &'static [Mechanism] {
    match choice {
        BackendChoice::Auto => &[Mechanism::Fentry, Mechanism::Kprobe],
        BackendChoice::Fentry => &[Mechanism::Fentry],
        BackendChoice::Kprobe => &[Mechanism::Kprobe],
        BackendChoice::Tracepoint => &[],
    }
}

/// The backend `choice` leads to, given what trying its candidates gave
/// (`tried`, in order: each mechanism and Ok if it attached, else why
/// not; trying stops at the first that attached). Used by `attach` and
/// by `doctor`, which tries them all.
pub fn choose(
    choice: BackendChoice,
    tried: &[(Mechanism, Result<(), String>)],
) -> Result<Choice, LoadError> {
    let mechanism = tried
        .iter()
        .find(|(_, result)| result.is_ok())
        .map(|(mechanism, _)| *mechanism);
    let refusals: Vec<String> = tried
        .iter()
        .map_while(|(mechanism, result)| result.as_ref().err().map(|why| (mechanism, why)))
        .map(|(mechanism, why)| format!("{} does not attach ({why})", mechanism.name()))
        .collect();
    let reason = match (choice, mechanism) {
        (BackendChoice::Auto, Some(mechanism)) => format!(
            "auto: {} hooks on do_wp_page and finish_fault load and attach{}",
            mechanism.name(),
            if refusals.is_empty() {
                String::new()
            } else {
                format!("; {}", refusals.join("; "))
            }
        ),
        (BackendChoice::Auto, None) if tried.is_empty() => {
            "auto: function hooks not tried; the tracepoint backend needs only tracepoints, raw tracepoints and BTF".into()
        }
        (BackendChoice::Auto, None) => format!(
            "auto: {}; the tracepoint backend needs only tracepoints, raw tracepoints and BTF",
            refusals.join("; ")
        ),
        (_, Some(mechanism)) => format!("requested with --backend {}", mechanism.name()),
        (BackendChoice::Fentry | BackendChoice::Kprobe, None) => {
            let backend = candidates(choice).first().map_or("fentry", |m| m.name());
            let why = tried
                .iter()
                .filter_map(|(_, result)| result.as_ref().err().cloned())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(LoadError::Backend {
                backend,
                reason: why,
            });
        }
        (BackendChoice::Tracepoint, None) => "requested with --backend tracepoint".into(),
    };
    Ok(Choice { mechanism, reason })
}

/// What was attached, and what could not be (optional tracepoints).
#[derive(Clone, Debug, Default)]
pub struct Attached {
    pub programs: Vec<String>,
    pub missing: Vec<String>,
    pub attach_time: Duration,
}

/// Kernel function hooks: BTF trampolines or kprobes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Fentry,
    Kprobe,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Fentry => "fentry",
            Mechanism::Kprobe => "kprobe",
        }
    }
}

/// The backend in use and how it came to be chosen.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub backend: &'static str,
    pub reason: String,
    /// Kernel functions hooked, as `fentry/do_wp_page` or `kprobe/...`.
    pub hooks: Vec<String>,
    /// Function-by-function fallbacks taken, each with its reason.
    pub fallbacks: Vec<String>,
    /// The filesystem's `->page_mkwrite` is recorded per file.
    pub page_mkwrite: bool,
    /// Per-page writeback times are recorded (`folio_end_writeback`).
    pub page_writeback: bool,
}

impl Probes {
    /// Attaches the backend `choice` asks for (`auto`: fentry, else kprobe,
    /// else tracepoint, by what really loads and attaches). Optional
    /// tracepoints this kernel lacks are recorded in `attached.missing`.
    pub fn attach(&mut self, choice: BackendChoice) -> Result<(), LoadError> {
        let started = Instant::now();
        let tracefs = self.tracefs.clone();
        // Writeback and process programs first: the stats the fault
        // programs create are then complete.
        self.attach_tracepoints(&tracefs, false)?;
        let mut tried = Vec::new();
        for &mechanism in candidates(choice) {
            let result = self.attach_function_hooks(mechanism);
            let attached = result.is_ok();
            tried.push((mechanism, result));
            if attached {
                break;
            }
        }
        let Choice { mechanism, reason } = choose(choice, &tried)?;
        self.selection.reason = reason;
        match mechanism {
            Some(mechanism) => {
                self.selection.backend = mechanism.name();
                let label = format!("raw_tp/{}", READ_FAULTS.name);
                match self.attach_tracepoint(&READ_FAULTS, &label) {
                    Ok(()) => self.attached.programs.push(label),
                    Err(_) => self
                        .attached
                        .missing
                        .push(format!("{label} ({})", READ_FAULTS.purpose)),
                }
            }
            None => {
                if let Some(tp) = TRACEPOINTS
                    .iter()
                    .find(|tp| tp.required && !tracepoint_exists(&tracefs, tp.category, tp.name))
                {
                    return Err(LoadError::NoFaultHook {
                        tracepoint: format!("{}:{}", tp.category, tp.name),
                        purpose: tp.purpose,
                        why: self.selection.reason.clone(),
                    });
                }
                self.selection.backend = "tracepoint";
                self.attach_tracepoints(&tracefs, true)?;
            }
        }
        self.attached.attach_time = started.elapsed();
        // Nothing is loaded after this: aya's parse of the kernel's BTF
        // (~9 MiB of heap) is not kept for the whole session.
        self.aya_btf = aya::Btf::default();
        Ok(())
    }

    /// The function-hook backend on `mechanism`: both fault hooks or
    /// nothing; then what only function hooks see, each with its fallback.
    fn attach_function_hooks(&mut self, mechanism: Mechanism) -> Result<(), String> {
        if let Some(why) = &self.fault_offsets_missing {
            return Err(why.clone());
        }
        if mechanism == Mechanism::Kprobe && !kprobe_pmu() {
            return Err(
                "no kprobe PMU (/sys/bus/event_source/devices/kprobe): kernel built without CONFIG_KPROBES"
                    .into(),
            );
        }
        let mut hooks = Vec::new();
        let mut fallbacks = Vec::new();
        // wp_page_copy first: once it is in, do_wp_page leaves private
        // copies to it, and no fault is recorded twice.
        match self.hook(mechanism, &WP_PAGE_COPY) {
            Ok(_) => {
                self.set_hook_bits(probe_common::hooks::COW_AT_WP_PAGE_COPY)
                    .map_err(|e| e.to_string())?;
                hooks.push(format!("{}/wp_page_copy", mechanism.name()));
            }
            Err(why) => fallbacks.push(format!(
                "wp_page_copy: {why}; do_wp_page records private copies"
            )),
        }
        for hook in [WP_PAGE, FINISH_FAULT] {
            if let Err(why) = self.hook(mechanism, &hook) {
                self.unhook_all();
                return Err(format!("{}: {why}", hook.function));
            }
            hooks.push(format!("{}/{}", mechanism.name(), hook.function));
        }
        self.selection.page_mkwrite = match self.hook(mechanism, &DO_PAGE_MKWRITE) {
            Ok(_) => {
                hooks.push(format!("{}/do_page_mkwrite", mechanism.name()));
                true
            }
            Err(why) => {
                let attached = self.hook_fs_mkwrite(mechanism);
                fallbacks.push(format!(
                    "do_page_mkwrite: {why}; hooked the filesystems' own: {}",
                    if attached.is_empty() {
                        "none found".to_string()
                    } else {
                        attached.join(", ")
                    }
                ));
                hooks.extend(attached.iter().map(|f| format!("{}/{f}", mechanism.name())));
                !attached.is_empty()
            }
        };
        self.selection.page_writeback = match self.hook(mechanism, &FOLIO_END_WRITEBACK) {
            Ok(function) => {
                hooks.push(format!("{}/{function}", mechanism.name()));
                true
            }
            Err(why) => {
                fallbacks.push(format!(
                    "folio_end_writeback: {why}; writeback is known per file only"
                ));
                false
            }
        };
        self.attached.programs.extend(hooks.iter().cloned());
        self.selection.hooks = hooks;
        self.selection.fallbacks = fallbacks;
        Ok(())
    }

    /// Loads (fentry: bound to `function`) and attaches one hook, on the
    /// function's name before folios where the kernel has not the first.
    /// Returns the function hooked.
    fn hook<'h>(&mut self, mechanism: Mechanism, hook: &Hook<'h>) -> Result<&'h str, String> {
        match (
            self.hook_function(mechanism, hook, hook.function),
            hook.before_folios,
        ) {
            (Ok(()), _) => Ok(hook.function),
            (Err(why), None) => Err(why),
            (Err(why), Some(older)) => self
                .hook_function(mechanism, hook, older)
                .map(|()| older)
                .map_err(|_| why),
        }
    }

    fn hook_function(
        &mut self,
        mechanism: Mechanism,
        hook: &Hook,
        function: &str,
    ) -> Result<(), String> {
        match mechanism {
            Mechanism::Fentry => {
                let program: &mut FEntry = program_mut(&mut self.ebpf, hook.fentry, self.stacks)
                    .map_err(|e| e.to_string())?;
                program
                    .load(function, &self.aya_btf)
                    .map_err(|err| short_error(&err.to_string()))?;
                program
                    .attach()
                    .map_err(|err| short_error(&err.to_string()))?;
            }
            Mechanism::Kprobe => {
                let program: &mut KProbe = program_mut(&mut self.ebpf, hook.kprobe, self.stacks)
                    .map_err(|e| e.to_string())?;
                if program.fd().is_err() {
                    program
                        .load()
                        .map_err(|err| short_error(&err.to_string()))?;
                }
                program
                    .attach(function, 0)
                    .map_err(|err| short_error(&err.to_string()))?;
            }
        }
        Ok(())
    }

    /// Hooks the filesystems' `->page_mkwrite` functions this kernel has.
    fn hook_fs_mkwrite(&mut self, mechanism: Mechanism) -> Vec<String> {
        let mut attached = Vec::new();
        match mechanism {
            Mechanism::Fentry => {
                // Filesystem `->page_mkwrite` functions in vmlinux BTF.
                let targets: Vec<&str> = FS_MKWRITE_HOOKS
                    .iter()
                    .copied()
                    .filter(|f| self.kernel_btf.has_function(f))
                    .collect();
                for (slot, function) in targets.iter().take(FENTRY_FS_MKWRITE_SLOTS).enumerate() {
                    let program = format!("{}{slot}", mw_name!("fentry_fs_mkwrite_"));
                    let hook = Hook {
                        function,
                        before_folios: None,
                        fentry: &program,
                        kprobe: "",
                    };
                    if self.hook(mechanism, &hook).is_ok() {
                        attached.push(function.to_string());
                    }
                }
            }
            Mechanism::Kprobe => {
                let symbols = Kallsyms::read();
                for &function in FS_MKWRITE_HOOKS.iter().filter(|f| symbols.has_function(f)) {
                    let hook = Hook {
                        function,
                        before_folios: None,
                        fentry: "",
                        kprobe: mw_name!("kprobe_fs_mkwrite"),
                    };
                    if self.hook(mechanism, &hook).is_ok() {
                        attached.push(function.to_string());
                    }
                }
            }
        }
        attached
    }

    /// Detaches every function hook (a backend that did not come together).
    fn unhook_all(&mut self) {
        let names: Vec<String> = self
            .ebpf
            .programs()
            .map(|(name, _)| name.to_string())
            .filter(|name| {
                name.starts_with(mw_name!("fentry_")) || name.starts_with(mw_name!("kprobe_"))
            })
            .collect();
        for name in names {
            if let Some(program) = self.ebpf.program_mut(&name) {
                let _ = match program {
                    aya::programs::Program::FEntry(p) => p.unload(),
                    aya::programs::Program::KProbe(p) => p.unload(),
                    _ => Ok(()),
                };
            }
        }
        let _ = self.set_hook_bits(0);
    }

    fn set_hook_bits(&mut self, bits: u32) -> Result<(), LoadError> {
        let mut map: Array<_, u32> = self.typed_map_mut(map_name::HOOKS)?;
        map.set(0, bits, 0)
            .map_err(LoadError::on_map(map_name::HOOKS))
    }

    /// Attaches the classic and raw tracepoints: the fault ones
    /// (`faults`) or all the others.
    fn attach_tracepoints(&mut self, tracefs: &Path, faults: bool) -> Result<(), LoadError> {
        let is_fault = |tp: &Tracepoint| tp.category == "exceptions";
        for tp in TRACEPOINTS.iter().rev().filter(|tp| is_fault(tp) == faults) {
            let label = format!("{}:{}", tp.category, tp.name);
            if let Some(why) = self.loaded.refusal(tp.program) {
                self.attached.missing.push(format!("{label} ({why})"));
                continue;
            }
            if !tracepoint_exists(tracefs, tp.category, tp.name) {
                if tp.required {
                    return Err(LoadError::MissingTracepoint(label, tp.purpose));
                }
                self.attached
                    .missing
                    .push(format!("{label} ({})", tp.purpose));
                continue;
            }
            self.attach_tracepoint(tp, &label)?;
            self.attached.programs.push(label);
        }
        if faults {
            return Ok(());
        }
        for tp in RAW_TRACEPOINTS {
            let label = format!("raw_tp/{}", tp.name);
            if let Some(why) = self.loaded.refusal(tp.program) {
                self.attached.missing.push(format!("{label} ({why})"));
                continue;
            }
            let attached = if tp.typed {
                let prog: &mut BtfTracePoint =
                    program_mut(&mut self.ebpf, tp.program, self.stacks)?;
                prog.attach().map(drop)
            } else {
                let prog: &mut RawTracePoint =
                    program_mut(&mut self.ebpf, tp.program, self.stacks)?;
                prog.attach(tp.name).map(drop)
            };
            match attached {
                Ok(()) => self.attached.programs.push(label),
                Err(err) if tp.required => {
                    return Err(LoadError::Attach {
                        program: label,
                        reason: err.to_string(),
                    })
                }
                Err(_) => self
                    .attached
                    .missing
                    .push(format!("{label} ({})", tp.purpose)),
            }
        }
        Ok(())
    }

    fn attach_tracepoint(&mut self, tp: &Tracepoint, label: &str) -> Result<(), LoadError> {
        let failed = |err: aya::programs::ProgramError| LoadError::Attach {
            program: label.to_string(),
            reason: err.to_string(),
        };
        if tp.raw {
            // Loaded here if not at start-up (READ_FAULTS: function
            // backends only), or its variant where the kernel refuses it.
            let mut name = self.loaded_variant(tp.program);
            let program: &mut RawTracePoint = program_mut(&mut self.ebpf, name, self.stacks)?;
            if program.fd().is_err() {
                if let Err(err) = program.load() {
                    let variant = tp.before_5_17.ok_or_else(|| failed(err))?;
                    let program: &mut RawTracePoint =
                        program_mut(&mut self.ebpf, variant, self.stacks)?;
                    program.load().map_err(failed)?;
                    self.loaded.note_variant(tp.program, variant);
                    name = variant;
                }
            }
            let program: &mut RawTracePoint = program_mut(&mut self.ebpf, name, self.stacks)?;
            program.attach(tp.name).map_err(failed)?;
        } else {
            let name = self.loaded_variant(tp.program);
            let program: &mut TracePoint = program_mut(&mut self.ebpf, name, self.stacks)?;
            program.attach(tp.category, tp.name).map_err(failed)?;
        }
        Ok(())
    }

    /// Whether `mechanism`'s fault hooks load and attach here (for
    /// `doctor`); the error says why not. Detached again at once.
    pub fn probe_mechanism(&mut self, mechanism: Mechanism) -> Result<Selection, String> {
        let result = self.attach_function_hooks(mechanism);
        let selection = self.selection.clone();
        self.unhook_all();
        result.map(|()| selection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(why: &str) -> Result<(), String> {
        Err(why.to_string())
    }

    #[test]
    fn auto_takes_the_first_mechanism_that_attaches_and_says_what_failed() {
        let tried = [
            (Mechanism::Fentry, refused("EPERM")),
            (Mechanism::Kprobe, Ok(())),
        ];
        let choice = choose(BackendChoice::Auto, &tried).unwrap();
        assert_eq!(choice.mechanism, Some(Mechanism::Kprobe));
        assert!(
            choice.reason.starts_with("auto: kprobe hooks"),
            "{}",
            choice.reason
        );
        assert!(choice.reason.contains("fentry does not attach (EPERM)"));
    }

    #[test]
    fn auto_falls_back_to_tracepoints_naming_each_refusal() {
        let tried = [
            (Mechanism::Fentry, refused("EPERM")),
            (Mechanism::Kprobe, refused("no kprobe PMU")),
        ];
        let choice = choose(BackendChoice::Auto, &tried).unwrap();
        assert_eq!(choice.mechanism, None);
        assert!(choice.reason.contains("fentry does not attach"));
        assert!(choice
            .reason
            .contains("kprobe does not attach (no kprobe PMU)"));
    }

    #[test]
    fn a_requested_mechanism_that_fails_is_an_error() {
        let tried = [(Mechanism::Kprobe, refused("no kprobe PMU"))];
        let err = choose(BackendChoice::Kprobe, &tried).unwrap_err();
        assert!(err.to_string().contains("no kprobe PMU"), "{err}");
    }

    #[test]
    fn each_choice_tries_its_own_candidates() {
        assert_eq!(
            candidates(BackendChoice::Auto),
            &[Mechanism::Fentry, Mechanism::Kprobe]
        );
        assert_eq!(candidates(BackendChoice::Fentry), &[Mechanism::Fentry]);
        assert!(candidates(BackendChoice::Tracepoint).is_empty());
        let choice = choose(BackendChoice::Tracepoint, &[]).unwrap();
        assert_eq!(choice.mechanism, None);
        assert_eq!(choice.reason, "requested with --backend tracepoint");
    }
}
