/* fwd_d128.cu - the prefill kernels of padded head dim 128: fwd_mma.cu compiled as its part 128
 * (see there) */
#define CFLASH_FWD_PART 128
#include "fwd_mma.cu"
