int keep_freed_memory(void);
