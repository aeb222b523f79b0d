"""Study assembly: decide when a study has fully arrived and turn it into a durable job.

``timing`` holds the rule (a pure function, also used by ``state``);
``assembler`` the thread that applies it.
"""
