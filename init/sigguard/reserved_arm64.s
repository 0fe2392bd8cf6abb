#include "textflag.h"

// nopHandler is a signal handler (called by the kernel with the C ABI)
// that returns at once, to the sigreturn trampoline in the link register.
TEXT ·nopHandler(SB),NOSPLIT|NOFRAME,$0-0
	RET

// func nopHandlerPC() uintptr
TEXT ·nopHandlerPC(SB),NOSPLIT,$0-8
	MOVD $·nopHandler(SB), R0
	MOVD R0, ret+0(FP)
	RET
