/*
 * Entry point of the chv test guest.
 *
 * chv enters here through the Linux 64-bit boot protocol: long mode, identity
 * paging, interrupts off, RSI = boot_params. Clear .bss (also on a reboot,
 * when memory may hold the previous run's data), switch to our own stack and
 * call guest_main(boot_params). If it ever returns, halt forever.
 */
    .section .text.start, "ax"
    .globl _start
_start:
    cli
    cld
    mov     %rsi, %r12              /* keep boot_params across the clear */
    mov     $__bss_start, %rdi
    mov     $__bss_end, %rcx
    sub     %rdi, %rcx
    xor     %eax, %eax
    rep stosb
    mov     $stack_top, %rsp
    mov     %r12, %rdi
    call    guest_main
1:  cli
    hlt
    jmp     1b

    .section .bss
    .balign 16
stack_bottom:
    .skip   16384
stack_top:

    .section .note.GNU-stack, "", @progbits
