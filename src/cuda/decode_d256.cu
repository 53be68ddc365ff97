/* decode_d256.cu - the D = 256 decode kernels: decode.cu compiled as its part 256 (see there) */
#define CFLASH_DECODE_PART 256
#include "decode.cu"
