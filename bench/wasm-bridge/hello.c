#include <stdio.h>
int main(void) { printf("hello from wasm32-wasi\n"); return 0; }
