/* fwd_d256.cu - the prefill kernels of padded head dim 256: fwd_mma.cu compiled as its part 256
 * (see there) */
#define CFLASH_FWD_PART 256
#include "fwd_mma.cu"
