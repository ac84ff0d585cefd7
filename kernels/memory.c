/* How freed memory goes back to the C library's allocator (glibc malloc), set once when the
 * kernels load (llama_np/kernels/native.py).
 *
 * A forward pass allocates and frees the same large temporaries in every block: activations
 * [T, F], the projections' outputs, the attention's scratch, a few MiB each. By default glibc
 * serves a block that large with its own mmap and unmaps it when freed, and trims the heap's
 * free top back to the OS: so the next block asks the OS for fresh pages again, and each
 * first touch of a page is a page fault (the first pass over a 512-token prompt faulted
 * ~300 MiB that way, several times what it held at once). Served from the heap and not
 * trimmed, a freed block is simply reused: after the first block, a pass touches no new
 * memory. Blocks above 32 MiB (the largest threshold glibc takes; the weights, the KV cache
 * of a long context) still get their own mappings. Returns 1 when the setting took, 0 where
 * there is no glibc (then nothing changes). */
#if defined(__GLIBC__)
#include <malloc.h>
#endif

int keep_freed_memory(void)
{
#if defined(__GLIBC__)
    return mallopt(M_MMAP_THRESHOLD, 32 << 20) && mallopt(M_TRIM_THRESHOLD, 1 << 30);
#else
    return 0;
#endif
}
