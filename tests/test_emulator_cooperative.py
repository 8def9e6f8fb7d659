"""Cooperative launches in the CPU emulation (gpulstm/emulator/cuda_on_cpu.h): every block's
threads are fibers and gpulstm_emu_grid_sync() is a grid-wide barrier; dynamic shared memory
is per block and survives the barrier; misuse is reported, never silently wrong."""
import numpy as np
import pytest

from gpulstm.emulator import EmulatedModule, EmulatorError

SRC = r'''
extern "C" __global__ void ring(float* a, float* out, int steps) {
  // step s + 1 of block b reads what block b + 1 wrote in step s: needs the grid barrier
  extern __shared__ float keep[];
  const int nb = gridDim.x, b = blockIdx.x, t = threadIdx.x, n = blockDim.x;
  if (t == 0) keep[0] = float(b);
  __syncthreads();
  for (int s = 0; s < steps; ++s) {
    const float v = a[(s * nb + (b + 1) % nb) * n + t];
    gpulstm_emu_grid_sync();
    a[((s + 1) * nb + b) * n + t] = v + 1.0f;
    gpulstm_emu_grid_sync();
  }
  out[b * n + t] = keep[0];
}
extern "C" __global__ void early_exit(float* a) {
  if (blockIdx.x == 1) return;  // block 1 never reaches the barrier: a hang on a GPU
  gpulstm_emu_grid_sync();
  a[blockIdx.x] = 1.0f;
}
'''


@pytest.fixture(scope="module")
def mod():
    return EmulatedModule(SRC)


@pytest.mark.parametrize("nb, nt", [(1, 7), (5, 40), (3, 96)])
def test_grid_barrier_orders_blocks(mod, nb, nt):
    S = 6
    a = np.full((S + 1, nb, nt), np.nan, np.float32)
    a[0] = np.arange(nb)[:, None] * 100 + np.arange(nt)
    out = np.full((nb, nt), np.nan, np.float32)
    mod.get_function("ring")((nb,), (nt,), (a, out, np.int32(S)), shared_mem=4, cooperative=True)
    want = a[0].copy()
    for s in range(S):
        want = np.roll(want, -1, axis=0) + 1
        assert np.array_equal(a[s + 1], want), s
    assert np.array_equal(out, np.repeat(np.arange(nb, dtype=np.float32)[:, None], nt, 1))


def test_grid_barrier_needs_a_cooperative_launch(mod):
    a = np.zeros((2, 2, 4), np.float32)
    with pytest.raises(EmulatorError, match="outside a cooperative launch"):
        mod.get_function("ring")((2,), (4,), (a, np.zeros((2, 4), np.float32), np.int32(1)),
                                 shared_mem=4)


def test_block_exiting_before_the_grid_barrier_is_a_deadlock(mod):
    with pytest.raises(EmulatorError, match="deadlock in a cooperative launch"):
        mod.get_function("early_exit")((3,), (8,), (np.zeros(3, np.float32),), cooperative=True)
    a = np.zeros((2, 1, 4), np.float32)  # the module still launches afterwards
    mod.get_function("ring")((1,), (4,), (a, np.zeros((1, 4), np.float32), np.int32(1)),
                             shared_mem=4, cooperative=True)
    assert np.array_equal(a[1], a[0] + 1)
