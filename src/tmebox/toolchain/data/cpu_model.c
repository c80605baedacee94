/* What gcc's __builtin_cpu_supports and __builtin_cpu_is read: __cpu_model and
 * __cpu_features2, which libgcc fills in from cpuid at start-up (libgcc.a is uninstrumented,
 * see builtins.c).  Here they are filled in from cpuid as the sandbox sees it: the rewriter
 * turns every cpuid into a call to the image's __tmebox_cpuid (toolchain/glue.py), which
 * reports no more than the image's CPU level, so code that dispatches at run time picks
 * only what the verifier let into the image.
 *
 * The feature numbers are gcc's ABI (bit f of __cpu_model.__cpu_features[0] for f < 32,
 * else bit f % 32 of __cpu_features2[f / 32 - 1]); tests/toolchain/test_cpu_level.py checks
 * them against the installed gcc.  There is no xgetbv here: the libc is built for every
 * level, and the runtime loads an x86-64-v3 image only where the kernel has enabled AVX
 * state, so cpuid's AVX bit alone says it is usable. */

static void cpuid(unsigned int leaf, unsigned int sub, unsigned int r[4])
{
	__asm__("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

struct __processor_model {
	unsigned int __cpu_vendor, __cpu_type, __cpu_subtype;
	unsigned int __cpu_features[1];
} __cpu_model;
unsigned int __cpu_features2[4];

enum {
	CMOV = 0, MMX = 1, POPCNT = 2, SSE = 3, SSE2 = 4, SSE3 = 5, SSSE3 = 6, SSE4_1 = 7,
	SSE4_2 = 8, AVX = 9, AVX2 = 10, FMA = 14, BMI = 16, BMI2 = 17, CMPXCHG16B = 46,
	F16C = 49, LAHF_LM = 54, LZCNT = 57, MOVBE = 58, OSXSAVE = 62, XSAVE = 81,
	X86_64 = 95, X86_64_V2 = 96, X86_64_V3 = 97,
};
enum { VENDOR_INTEL = 1, VENDOR_AMD = 2, VENDOR_OTHER = 3 };
enum { GENU = 0x756e6547, AUTH = 0x68747541 };  /* cpuid(0).ebx: "Genu"ineIntel, "Auth"enticAMD */

static int has(int f)
{
	return f < 32 ? __cpu_model.__cpu_features[0] >> f & 1
		      : __cpu_features2[f / 32 - 1] >> (f % 32) & 1;
}

static void set(int f, int on)
{
	if (!on)
		return;
	if (f < 32)
		__cpu_model.__cpu_features[0] |= 1u << f;
	else
		__cpu_features2[f / 32 - 1] |= 1u << (f % 32);
}

static int all(const int *fs, int n)
{
	for (int i = 0; i < n; i++)
		if (!has(fs[i]))
			return 0;
	return 1;
}

int __attribute__((constructor(101))) __cpu_indicator_init(void)
{
	unsigned int r[4], max, b, c, d;
	static const int v2[] = {CMPXCHG16B, LAHF_LM, POPCNT, SSE3, SSE4_1, SSE4_2, SSSE3};
	static const int v3[] = {AVX, AVX2, BMI, BMI2, F16C, FMA, LZCNT, MOVBE, OSXSAVE};

	if (__cpu_model.__cpu_vendor)
		return 0;
	cpuid(0, 0, r);
	max = r[0];
	__cpu_model.__cpu_vendor = r[1] == GENU ? VENDOR_INTEL
				 : r[1] == AUTH ? VENDOR_AMD : VENDOR_OTHER;
	cpuid(1, 0, r);
	c = r[2], d = r[3];
	set(CMOV, d >> 15 & 1);
	set(MMX, d >> 23 & 1);
	set(SSE, d >> 25 & 1);
	set(SSE2, d >> 26 & 1);
	set(SSE3, c & 1);
	set(SSSE3, c >> 9 & 1);
	set(FMA, c >> 12 & 1);
	set(CMPXCHG16B, c >> 13 & 1);
	set(SSE4_1, c >> 19 & 1);
	set(SSE4_2, c >> 20 & 1);
	set(MOVBE, c >> 22 & 1);
	set(POPCNT, c >> 23 & 1);
	set(XSAVE, c >> 26 & 1);
	set(OSXSAVE, c >> 27 & 1);
	set(AVX, c >> 28 & 1);
	set(F16C, c >> 29 & 1);
	if (max >= 7) {
		cpuid(7, 0, r);
		b = r[1];
		set(BMI, b >> 3 & 1);
		set(AVX2, b >> 5 & 1);
		set(BMI2, b >> 8 & 1);
	}
	cpuid(0x80000000, 0, r);
	if (r[0] >= 0x80000001) {
		cpuid(0x80000001, 0, r);
		set(LAHF_LM, r[2] & 1);
		set(LZCNT, r[2] >> 5 & 1);
	}
	set(X86_64, 1);
	set(X86_64_V2, all(v2, sizeof v2 / sizeof *v2));
	set(X86_64_V3, has(X86_64_V2) && all(v3, sizeof v3 / sizeof *v3));
	return 0;
}
