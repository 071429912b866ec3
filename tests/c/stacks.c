/* The call-site test's writer: known functions store to known pages of a
 * shared mapping. Built twice by build.rs, with and without frame pointers.
 * Usage: stacks FILE PAGES [PAUSE_MS]. Even pages are stored by
 * store_page (called from write_even), odd ones by write_odd itself. It
 * then waits PAUSE_MS before exiting, as a program that goes on running
 * does (stacks are symbolized while their writer lives). The test finds
 * the lines by the MARK comments. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

__attribute__((noinline)) void store_page(volatile char *map, long page) {
    map[page * PAGE] = 'e'; /* MARK store_page */
}

__attribute__((noinline)) void write_even(volatile char *map, long pages) {
    for (long page = 0; page < pages; page += 2)
        store_page(map, page); /* MARK write_even */
}

__attribute__((noinline)) void write_odd(volatile char *map, long pages) {
    for (long page = 1; page < pages; page += 2)
        map[page * PAGE] = 'o'; /* MARK write_odd */
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    long pages = atol(argv[2]);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, pages * PAGE) != 0)
        return 1;
    char *map = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return 1;
    write_even(map, pages); /* MARK main_even */
    write_odd(map, pages); /* MARK main_odd */
    if (argc > 3)
        usleep(atol(argv[3]) * 1000);
    return 0;
}
