/* Floating point: libm, long double (x87), float/double conversions, complex. */
#include <complex.h>
#include <math.h>
#include <stdio.h>

int main(void)
{
	volatile double x = 2.0;
	printf("sqrt=%.15g exp=%.15g log=%.15g\n", sqrt(x), exp(x), log(x));
	printf("sin=%.15g cos=%.15g atan2=%.15g\n", sin(x), cos(x), atan2(1.0, x));
	printf("pow=%.15g fmod=%.15g hypot=%.15g\n", pow(x, 0.5), fmod(10.5, 3.0), hypot(3, 4));
	volatile long double lx = 3.0L;
	printf("expl=%.18Lg sqrtl=%.18Lg\n", expl(lx), sqrtl(lx));
	volatile float f = 1.25f;
	printf("sinf=%.7g float->int=%d int->double=%.1f\n", sinf(f), (int)(f * 100), (double)12345);
	printf("floor=%.1f ceil=%.1f round=%.1f trunc=%.1f\n", floor(-2.5), ceil(-2.5), round(-2.5),
	       trunc(-2.5));
	printf("inf=%f nan=%d\n", 1.0 / (x - 2.0), isnan(sqrt(-x)));
	double complex z = (volatile double)1.0 + 2.0 * I;
	double complex w = z * z;
	printf("complex=%.3f%+.3fi abs=%.6f\n", creal(w), cimag(w), cabs(z));
	double acc = 0;
	for (int i = 1; i <= 1000; i++)
		acc += 1.0 / ((double)i * i);
	printf("basel=%.12f\n", acc);
	return 0;
}
