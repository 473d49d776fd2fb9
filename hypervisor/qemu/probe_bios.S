/* KVM probe firmware for hypervisor/qemu/probe.py (64 KiB -bios image, code at 0xff000).
   Real mode -> 32-bit protected mode -> 64-bit long mode with 2 MiB identity paging, then
   copy 16 MiB backwards with `std; rep movsq` (the first thing Linux's decompressor does)
   and write 0x2a to isa-debug-exit, so QEMU exits with status 85.
   Build: as --64 probe_bios.S -o p.o && ld -Ttext=0xff000 -e 0xff000 --oformat=binary p.o -o p.bin */
.code16
start16:
  cli
  lgdtl %cs:(gdtr - 0xf0000)
  mov %cr0, %eax
  or $1, %eax
  mov %eax, %cr0
  ljmpl $0x08, $start32
.code32
start32:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  /* zero 3 pages at 0x10000 */
  mov $0x10000, %edi
  xor %eax, %eax
  mov $3072, %ecx
  rep stosl
  movl $0x11003, 0x10000
  movl $0x12003, 0x11000
  mov $0x12000, %edi
  mov $0x83, %eax
  mov $512, %ecx
1:
  mov %eax, (%edi)
  add $0x200000, %eax
  add $8, %edi
  loop 1b
  mov %cr4, %eax
  or $0x20, %eax
  mov %eax, %cr4
  mov $0x10000, %eax
  mov %eax, %cr3
  mov $0xc0000080, %ecx
  rdmsr
  or $0x100, %eax
  wrmsr
  mov %cr0, %eax
  or $0x80000000, %eax
  mov %eax, %cr0
  ljmp $0x18, $start64
.code64
start64:
  mov $0x3000000 - 8, %rdi
  mov $0x2000000 - 8, %rsi
  mov $0x200000, %ecx
  std
  rep movsq
  cld
  mov $0x2a, %al
  out %al, $0xf4
2:
  hlt
  jmp 2b
.align 8
gdt:
  .quad 0
  .quad 0x00cf9b000000ffff  /* 0x08 code32, accessed */
  .quad 0x00cf93000000ffff  /* 0x10 data, accessed */
  .quad 0x00af9b000000ffff  /* 0x18 code64, accessed */
gdtr:
  .word gdtr - gdt - 1
  .long gdt
