/* decode_d128.cu - the D = 128 decode kernels: decode.cu compiled as its part 128 (see there) */
#define CFLASH_DECODE_PART 128
#include "decode.cu"
