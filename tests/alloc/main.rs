//! Allocation tests: the workspace passes of every kernel allocate nothing tensor-sized.
//! A counting global allocator (`tests/common/alloc.rs`) records every allocation made
//! (on any thread) while a pass runs, so this binary holds a single test that runs the
//! checks one after the other: no other test allocates meanwhile.

#[path = "../common/mod.rs"]
mod common;

mod conv;
mod norm;

use common::alloc::Counting;

#[global_allocator]
static A: Counting = Counting;

#[test]
fn workspace_passes_allocate_nothing_large() {
    // The norm checks first: the convolution checks run in a pool of their own, whose
    // worker threads, exiting after it is dropped, may allocate while a later check
    // counts.
    norm::workspace_passes_allocate_nothing_larger_than_1_kib();
    conv::workspace_passes_allocate_nothing_tensor_sized();
}
