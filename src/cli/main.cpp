// The `cascade` command. Placeholder until the engine lands.
#include <cstdio>
int main() { std::puts("cascade"); return 0; }
