"""The one exception type HealthiVert raises for problems a user can act on."""


class HealthiVertError(Exception):
    """A problem with the input or the request, with a message a radiologist can act on.

    The CLI prints the message and exits with status 2; ``app.batch`` marks the case failed and goes on.
    """
