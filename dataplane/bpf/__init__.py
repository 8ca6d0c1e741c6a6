"""The XDP load balancer's C sources (headers split by concern, lb.bpf.c.j2) and
:mod:`dataplane.bpf.render`, which turns a plan into the program text."""
