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


/*
 * Interrupt entry points for the virtio-msix scenario. msix_isr counts the
 * MSI-X interrupt and writes the xAPIC EOI register; exceptions 0-31 go to
 * guest_exception(vector, frame), which reports and powers off.
 */
    .text
    .globl msix_isr
msix_isr:
    push    %rax
    lock incl msix_count(%rip)
    mov     $0xfee000b0, %eax
    movl    $0, (%rax)
    pop     %rax
    iretq

    .globl spurious_isr
spurious_isr:
    iretq

.irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exc_stub_\n:
    pushq   $\n
    jmp     exc_common
.endr

exc_common:
    pop     %rdi
    mov     %rsp, %rsi
    and     $-16, %rsp
    call    guest_exception
2:  cli
    hlt
    jmp     2b

    .section .rodata
    .balign 8
    .globl exc_stub_table
exc_stub_table:
.irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad   exc_stub_\n
.endr

    .section .bss
    .balign 16
stack_bottom:
    .skip   16384
stack_top:

    .section .note.GNU-stack, "", @progbits
