/* fwd_d64.cu - the prefill kernels of padded head dim 64: fwd_mma.cu compiled as its part 64
 * (see there) */
#define CFLASH_FWD_PART 64
#include "fwd_mma.cu"
