/* Compiler support routines that gcc calls instead of inlining (libgcc's job
 * in a normal link).  libgcc.a is uninstrumented machine code and would fail
 * verification, so the sandbox libc carries its own, written from the
 * definitions in the gcc internals manual ("Routines for integer arithmetic",
 * "Routines for floating point emulation") and C11 Annex G (complex
 * multiplication and division), and compiled through the rewriter. */

#include <math.h>

typedef unsigned __int128 u128;
typedef __int128 i128;

static u128 udivmod128(u128 n, u128 d, u128 *rem)
{
	u128 q = 0, r = 0;
	if (d == 0) {
		/* Division by zero is undefined; trap like the hardware divider. */
		__builtin_trap();
	}
	if (d > n) {
		if (rem)
			*rem = n;
		return 0;
	}
	if ((n >> 64) == 0 && (d >> 64) == 0) {
		unsigned long long a = (unsigned long long)n, b = (unsigned long long)d;
		if (rem)
			*rem = a % b;
		return a / b;
	}
	for (int i = 127 - __builtin_clzll((unsigned long long)(n >> 64)); i >= 0; i--) {
		/* restoring shift-subtract division, one quotient bit per step */
		r = (r << 1) | ((n >> i) & 1);
		if (r >= d) {
			r -= d;
			q |= (u128)1 << i;
		}
	}
	if (rem)
		*rem = r;
	return q;
}

u128 __udivmodti4(u128 n, u128 d, u128 *rem) { return udivmod128(n, d, rem); }
u128 __udivti3(u128 n, u128 d) { return udivmod128(n, d, 0); }

u128 __umodti3(u128 n, u128 d)
{
	u128 r;
	udivmod128(n, d, &r);
	return r;
}

i128 __divti3(i128 a, i128 b)
{
	int neg = (a < 0) != (b < 0);
	u128 q = udivmod128(a < 0 ? -(u128)a : (u128)a, b < 0 ? -(u128)b : (u128)b, 0);
	return neg ? -(i128)q : (i128)q;
}

i128 __modti3(i128 a, i128 b)
{
	u128 r;
	udivmod128(a < 0 ? -(u128)a : (u128)a, b < 0 ? -(u128)b : (u128)b, &r);
	return a < 0 ? -(i128)r : (i128)r;
}

/* SWAR count: a bit-clearing loop would be recognised by gcc as the popcount
 * idiom and compiled into a call to these very functions. */
int __popcountdi2(unsigned long long x)
{
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (int)((x * 0x0101010101010101ULL) >> 56);
}

int __popcountsi2(unsigned int x) { return __popcountdi2(x); }

int __popcountti2(u128 x)
{
	return __popcountdi2((unsigned long long)x) + __popcountdi2((unsigned long long)(x >> 64));
}

#define POWI(name, T) \
	T name(T x, int m) \
	{ \
		unsigned n = m < 0 ? -(unsigned)m : (unsigned)m; \
		T r = 1; \
		for (; n; n >>= 1, x *= x) \
			if (n & 1) \
				r *= x; \
		return m < 0 ? 1 / r : r; \
	}
POWI(__powisf2, float)
POWI(__powidf2, double)
POWI(__powixf2, long double)

/* C11 G.5.1: (a+ib)(c+id), recovering infinities that the naive formula
 * turns into NaN. */
#define MUL(name, T, CT, ISNAN, ISINF, COPYSIGN) \
	CT name(T a, T b, T c, T d) \
	{ \
		T ac = a * c, bd = b * d, ad = a * d, bc = b * c; \
		T x = ac - bd, y = ad + bc; \
		if (ISNAN(x) && ISNAN(y)) { \
			int recalc = 0; \
			if (ISINF(a) || ISINF(b)) { \
				a = COPYSIGN(ISINF(a) ? 1 : 0, a); \
				b = COPYSIGN(ISINF(b) ? 1 : 0, b); \
				if (ISNAN(c)) c = COPYSIGN(0, c); \
				if (ISNAN(d)) d = COPYSIGN(0, d); \
				recalc = 1; \
			} \
			if (ISINF(c) || ISINF(d)) { \
				c = COPYSIGN(ISINF(c) ? 1 : 0, c); \
				d = COPYSIGN(ISINF(d) ? 1 : 0, d); \
				if (ISNAN(a)) a = COPYSIGN(0, a); \
				if (ISNAN(b)) b = COPYSIGN(0, b); \
				recalc = 1; \
			} \
			if (!recalc && (ISINF(ac) || ISINF(bd) || ISINF(ad) || ISINF(bc))) { \
				if (ISNAN(a)) a = COPYSIGN(0, a); \
				if (ISNAN(b)) b = COPYSIGN(0, b); \
				if (ISNAN(c)) c = COPYSIGN(0, c); \
				if (ISNAN(d)) d = COPYSIGN(0, d); \
				recalc = 1; \
			} \
			if (recalc) { \
				x = INFINITY * (a * c - b * d); \
				y = INFINITY * (a * d + b * c); \
			} \
		} \
		CT z; \
		__real__ z = x; \
		__imag__ z = y; \
		return z; \
	}

/* C11 G.5.1: (a+ib)/(c+id) with scaling by a power of two against overflow. */
#define DIV(name, T, CT, ISNAN, ISINF, ISFINITE, COPYSIGN, LOGB, SCALBN, FABS, FMAX) \
	CT name(T a, T b, T c, T d) \
	{ \
		int ilogbw = 0; \
		T logbw = LOGB(FMAX(FABS(c), FABS(d))); \
		if (ISFINITE(logbw)) { \
			ilogbw = (int)logbw; \
			c = SCALBN(c, -ilogbw); \
			d = SCALBN(d, -ilogbw); \
		} \
		T denom = c * c + d * d; \
		T x = SCALBN((a * c + b * d) / denom, -ilogbw); \
		T y = SCALBN((b * c - a * d) / denom, -ilogbw); \
		if (ISNAN(x) && ISNAN(y)) { \
			if (denom == 0 && (!ISNAN(a) || !ISNAN(b))) { \
				x = COPYSIGN(INFINITY, c) * a; \
				y = COPYSIGN(INFINITY, c) * b; \
			} else if ((ISINF(a) || ISINF(b)) && ISFINITE(c) && ISFINITE(d)) { \
				a = COPYSIGN(ISINF(a) ? 1 : 0, a); \
				b = COPYSIGN(ISINF(b) ? 1 : 0, b); \
				x = INFINITY * (a * c + b * d); \
				y = INFINITY * (b * c - a * d); \
			} else if (ISINF(logbw) && logbw > 0 && ISFINITE(a) && ISFINITE(b)) { \
				c = COPYSIGN(ISINF(c) ? 1 : 0, c); \
				d = COPYSIGN(ISINF(d) ? 1 : 0, d); \
				x = 0 * (a * c + b * d); \
				y = 0 * (b * c - a * d); \
			} \
		} \
		CT z; \
		__real__ z = x; \
		__imag__ z = y; \
		return z; \
	}

MUL(__mulsc3, float, _Complex float, isnan, isinf, copysignf)
MUL(__muldc3, double, _Complex double, isnan, isinf, copysign)
MUL(__mulxc3, long double, _Complex long double, isnan, isinf, copysignl)
DIV(__divsc3, float, _Complex float, isnan, isinf, isfinite, copysignf, logbf, scalbnf, fabsf,
    fmaxf)
DIV(__divdc3, double, _Complex double, isnan, isinf, isfinite, copysign, logb, scalbn, fabs, fmax)
DIV(__divxc3, long double, _Complex long double, isnan, isinf, isfinite, copysignl, logbl,
    scalbnl, fabsl, fmaxl)
