//! Call-site stacks (`--stacks`): the writer's user stack, taken only when
//! a first-write record goes out, so a repeated fault never pays for it.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_F_USER_STACK, helpers::bpf_get_stackid, EbpfContext};
use probe_common::{counter, NO_STACK};

use crate::maps::{bump, STACKS};

/// The program context a record's stack is taken from. It travels as an
/// argument down to where a record is sent: `bpf_get_stackid` wants the
/// context itself, which the verifier does not let through map memory.
#[derive(Clone, Copy)]
pub(crate) struct CallSite(*mut c_void);

impl CallSite {
    #[inline(always)]
    pub(crate) fn of<C: EbpfContext>(ctx: &C) -> Self {
        Self(ctx.as_ptr())
    }

    /// The writer's user stack in `STACKS`, or [`NO_STACK`] when stacks
    /// are off (a constant to the verifier: the call is not even checked
    /// then) or the kernel could not take it.
    #[inline(always)]
    pub(crate) fn stack_id(self) -> u32 {
        if config!(user_stacks) == 0 {
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
