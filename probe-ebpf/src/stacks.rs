//! Call-site stacks (`--stacks`): the writer's user stack, taken only when
//! a first-write record goes out, so a repeated fault never pays for it.
//!
//! Only the `*_stacks` twins of the write-fault programs take stacks
//! (`CallSite<true>`); the programs loaded without `--stacks` hold no call
//! to `bpf_get_stackid` and no reference to the stack map, dead or not:
//! with one, even never run, the ext4 rewrite test saw 1-2% more write
//! faults (page_mkwrite retries) on Linux 6.18, which its twin-less build
//! did not.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_F_USER_STACK, helpers::bpf_get_stackid, EbpfContext};
use probe_common::{counter, NO_STACK};

use crate::maps::{bump, STACKS};

/// The program context a record's stack is taken from. It travels as an
/// argument down to where a record is sent: `bpf_get_stackid` wants the
/// context itself, which the verifier does not let through map memory.
#[derive(Clone, Copy)]
pub(crate) struct CallSite<const TAKE: bool>(*mut c_void);

/// The context of a program that takes no stack.
pub(crate) type NoStack = CallSite<false>;

impl<const TAKE: bool> CallSite<TAKE> {
    #[inline(always)]
    pub(crate) fn of<C: EbpfContext>(ctx: &C) -> Self {
        Self(ctx.as_ptr())
    }

    /// The writer's user stack in `STACKS`, or [`NO_STACK`] in a program
    /// that takes none (the call is not compiled in) or when the kernel
    /// could not take it.
    #[inline(always)]
    pub(crate) fn stack_id(self) -> u32 {
        if !TAKE {
            return NO_STACK;
        }
        // SAFETY: a program context and the stack map; identical stacks
        // share an id, and a slot holding another stack is not taken
        // over (no BPF_F_REUSE_STACKID: an id once read stays its stack).
        let id = unsafe {
            bpf_get_stackid(
                self.0,
                (&raw const STACKS).cast_mut().cast(),
                u64::from(BPF_F_USER_STACK),
            )
        };
        if id < 0 {
            bump(counter::STACKS_NOT_TAKEN);
            return NO_STACK;
        }
        id as u32
    }
}
