#include "textflag.h"

// nopHandler is a signal handler (called by the kernel with the C ABI)
// that returns at once: its return address is the sigaction's restorer.
TEXT ·nopHandler(SB),NOSPLIT|NOFRAME,$0-0
	RET

// func nopHandlerPC() uintptr
TEXT ·nopHandlerPC(SB),NOSPLIT,$0-8
	LEAQ ·nopHandler(SB), AX
	MOVQ AX, ret+0(FP)
	RET
