/* pause — the sandbox ("infra") container of every pod on the sidetrace one-node cluster.
 *
 * It holds the pod's namespaces open: as pid 1 it sleeps until SIGTERM or SIGINT and reaps
 * any orphan that is re-parented to it (the pod shares its pid namespace when asked to).
 * Built with `gcc -static` by `e2e/peers.sh node`, packed FROM scratch by e2e/cluster/cluster-up.sh,
 * because no upstream pause image can be pulled here. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
	(void)sig;
	_exit(0);
}

static void on_child(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("sidetrace-pause 0.1.0");
		return 0;
	}
	if (getpid() != 1) {
		fprintf(stderr, "pause: warning: not pid 1\n");
	}
	struct sigaction stop = {.sa_handler = on_stop};
	struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
	if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
	    sigaction(SIGCHLD, &child, NULL) < 0) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;) {
		pause();
	}
}
