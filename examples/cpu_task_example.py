import asyncio
import time
from sitq import TaskQueue, ProcessWorker, SQLiteBackend, PickleSerializer

# A CPU-bound function
def compute_fibonacci(n):
    if n <= 1:
        return n
    else:
        return compute_fibonacci(n-1) + compute_fibonacci(n-2)

async def main():
    queue = TaskQueue(
        backend=SQLiteBackend("cpu_tasks.db"),
        serializer=PickleSerializer()
    )
    await queue.backend.connect()

    # Use ProcessWorker to run the sync function in a separate process
    worker = ProcessWorker(
        backend=queue.backend,
        serializer=PickleSerializer(),
        concurrency=2 # Run up to 2 CPU-bound tasks in parallel
    )

    await worker.start()

    print("Enqueuing CPU-bound task...")
    task_id = await queue.enqueue(compute_fibonacci, 35)

    result = await queue.get_result(task_id, timeout=20)
    if result and result.status == 'success':
        value = queue.serializer.loads(result.value)
        print(f"Fibonacci result: {value}")
    else:
        print(f"Task failed or timed out. Status: {result.status if result else 'timeout'}")


    await worker.stop()
    await queue.backend.close()

if __name__ == "__main__":
    asyncio.run(main())
