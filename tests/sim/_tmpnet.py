import random
class InMemoryTransport:
    def __init__(self, seed=0):
        self.rng = random.Random(seed); self.q = []; self.delay=(1,1); self.drop_rate=0.0; self.duplicate_rate=0.0
        self.blocked=set(); self.seq=0
    def send(self, m, now):
        if (m.sender, m.receiver) in self.blocked or self.rng.random() < self.drop_rate: return
        n = 2 if self.rng.random() < self.duplicate_rate else 1
        for _ in range(n):
            self.seq += 1; self.q.append((now + self.rng.randint(*self.delay), self.seq, m))
    def deliver(self, now):
        due = sorted([x for x in self.q if x[0] <= now], key=lambda x: (x[0], x[1]))
        self.q = [x for x in self.q if x[0] > now]
        return [m for _, _, m in due]
    def crash(self, nid): self.q = [x for x in self.q if x[2].receiver != nid and x[2].sender != nid]
    def heal(self): self.blocked.clear()
    def isolate(self, nid, ids=None):
        for o in ids or [f"n{i}" for i in range(1,10)]: self.blocked |= {(nid,o),(o,nid)}
    def partition(self, a, b):
        for x in a:
            for y in b: self.blocked |= {(x,y),(y,x)}
    def cut(self, a, b): self.blocked |= {(a,b),(b,a)}
