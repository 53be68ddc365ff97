/* decode_d64.cu - the D = 64 decode kernels: decode.cu compiled as its part 64 (see there) */
#define CFLASH_DECODE_PART 64
#include "decode.cu"
