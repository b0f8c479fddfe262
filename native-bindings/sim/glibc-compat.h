/* Forced into the simulator's build (scripts/build.mjs): glibc 2.34 moved
   pthread_condattr_setclock from libpthread into libc under a new symbol version; binding
   the old one (which libc still exports) lets the same build load on glibc 2.28 to 2.33,
   Debian 11 among them, where gpu-persistd-standalone runs it (there the symbol comes from
   the libpthread that Node itself links). */
__asm__(".symver pthread_condattr_setclock, pthread_condattr_setclock@GLIBC_2.3.3");
