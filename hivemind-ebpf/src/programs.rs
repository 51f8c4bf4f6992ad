use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    btf_maps::PerCpuArray,
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use hivemind_common::{Counter, reason};

// BTF-defined maps (the `.maps` section) so libbpf tools such as `bpftool prog loadall` accept
// the object too, not only aya.
#[btf_map(name = "HM_COUNTERS", pin_by_name)]
static COUNTERS: PerCpuArray<Counter, { reason::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
fn count(reason: u32, bytes: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot owned by this CPU for the duration of the program.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
        }
    }
}

#[classifier]
pub fn hm_from_container(ctx: TcContext) -> i32 {
    count(reason::PASS_TO_HOST, ctx.len());
    TC_ACT_OK
}

#[classifier]
pub fn hm_to_container(ctx: TcContext) -> i32 {
    count(reason::PASS_TO_HOST, ctx.len());
    TC_ACT_OK
}

#[classifier]
pub fn hm_node_ingress(ctx: TcContext) -> i32 {
    count(reason::PASS_TO_HOST, ctx.len());
    TC_ACT_OK
}

#[xdp]
pub fn hm_underlay(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
