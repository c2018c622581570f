/*
 * weft-pause: the sandbox ("pause") process of weft's test images.
 *
 * Blocks in pause() until SIGTERM or SIGINT, then exits 0. As PID 1 of a
 * pod sandbox it also reaps every child that exits (SIGCHLD), so shared-PID
 * pods leave no zombies. Built with `gcc -static -Os`; see
 * integration/src/cluster/image.rs.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void handle(int sig, void (*fn)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) < 0)
		exit(1);
}

int main(void)
{
	handle(SIGTERM, on_stop);
	handle(SIGINT, on_stop);
	handle(SIGCHLD, on_child);
	for (;;)
		pause();
	return 1;
}
