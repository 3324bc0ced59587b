"""The loop that keeps `slots` trials running, and what it decides: lifecycle moves, retries, placement, pack sizes,
liveness, and the clones, extensions and resumes other terminals ask for."""
